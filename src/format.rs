//! The `.inr` container, byte for byte as specified in `codec-spec.md` (version 2; reads 1).
//!
//! A file is a fixed 30-byte header (§3), a table of per-tensor quantization steps and bit
//! widths (§4.1), a length-prefixed payload made of one entropy-coded group per distinct bit
//! width (§4.2, §5) and a CRC32 over everything before it (§4.3).
//! All integers are little endian. Parsing never needs candle; every header value is checked
//! against [`Limits`] before anything is allocated from it, and every failure is a typed
//! [`FormatError`], never a panic.

use crate::entropy::{self, EntropyError};

// §4.7 Codebook section (flag bit 4, version 2): weight sharing.
#[path = "format_codebook.rs"]
mod codebook;
pub use codebook::{Codebook, FLAG_CODEBOOK};

// §11 Audio files (modality 2, version 2) live in their own child module.
#[path = "format_audio.rs"]
mod audio;
pub use audio::{
    read_audio_file, write_audio_file, AudioHeader, AudioInfo, AudioInrFile, SampleKind,
    AUDIO_SECTION_BYTES, MAX_AUDIO_CHANNELS, MAX_AUDIO_FRAMES, MAX_AUDIO_SYMBOLS, MAX_AUDIO_WORK,
    MAX_SAMPLE_RATE, MAX_WINDOW_LEN, MODALITY_AUDIO, VERSION_AUDIO,
};

// §12 Modulation-mode files (flag bit 2, version 2) live in their own child module.
#[path = "format_mod.rs"]
mod modulation;
pub use modulation::{
    is_audio_modulation_file, is_modulation_file, mod_grid_dims, read_audio_mod_file,
    read_mod_file, write_audio_mod_file, write_mod_file, AudioModInrFile, ModInfo, ModInrFile,
    FLAG_MODULATIONS, MIN_CELL, MOD_FLAGS, MOD_SECTION_BYTES, VERSION_MOD,
};

// §14 Audio grid files (modality 2, flag bit 3, version 2) live in their own child module.
#[path = "format_audio_grid.rs"]
mod audio_grid;
pub use audio_grid::{
    audio_grid_segment_bytes, check_audio_grid, is_audio_grid_file, read_audio_grid_file,
    validate_audio_grid_arch, write_audio_grid_file, AudioGridInrFile, GridSegment, SEGMENT_ARM,
    SEGMENT_PREDICTED, SEGMENT_SPLIT,
};

// §13 Grid-mode files (flag bit 3, version 2) live in their own child module.
#[path = "format_grid.rs"]
mod grid;
pub use grid::{
    arm_coded_bytes, grid_level_dims, grid_tensor_lens, is_grid_file, predicted_shapes,
    read_grid_file, read_grid_file_with, validate_grid_arch, write_grid_file, ArmInfo, GridInfo,
    GridInrFile, LevelPredictor, Synthesis, Upsampling, ARM_HEADER_BYTES, FLAG_GRID, FLAG_GRID_ARM,
    FLAG_GRID_ARM_PRIOR, FLAG_GRID_BSPLINE, FLAG_GRID_CONTEXTS, FLAG_GRID_FRACTION, FLAG_GRID_HEAD,
    FLAG_GRID_PREDICT, GRID_HEAD_TENSORS, MAX_GRID_DEPTH, MAX_GRID_LEVELS, PREDICTOR_ENTRY_BYTES,
    VERSION_GRID,
};

/// §3.1 Magic bytes: `0x89 'I' 'N' 'R'` (a high byte first, as in PNG, catches 7-bit and
/// text-mode damage).
pub const MAGIC: [u8; 4] = [0x89, b'I', b'N', b'R'];
/// §3.2 The format version this crate reads and writes.
pub const VERSION: u8 = 2;
/// §3.2 Oldest version this decoder still reads (version 1 = version 2 without flags).
pub const MIN_VERSION: u8 = 1;
/// §3.4 Flag bit 0: a base-reference section (§4.5) follows the step table, and the stored
/// tensors are residuals from that base's weights (§6.2).
pub const FLAG_BASE: u16 = 1 << 0;
/// §3.4 Flags of the image layout in version 2 (flag bit 2, [`FLAG_MODULATIONS`], selects the
/// modulation layout of §12 instead).
pub const KNOWN_FLAGS: u16 =
    FLAG_BASE | FLAG_SPARSE | FLAG_CODEBOOK | FLAG_SEEDED_MASKS | FLAG_BASE_MASKS;
/// §4.5 Size of the base-reference section: the base id (`u64`).
pub const BASE_REF_BYTES: usize = 8;
/// §3.2 Version 2 (the current version; alias kept for the sparsity code).
pub const VERSION_2: u8 = VERSION;
/// §3.4 Flag bit 1 (version 2): per-tensor sparsity masks follow the step table (§4.6).
pub const FLAG_SPARSE: u16 = 1 << 1;
/// §3.4 Flag bit 5 (version 2, with bit 1): the sparsity section holds one threshold per
/// masked tensor instead of a mask stream; the decoder regenerates the masks (§4.6.1).
pub const FLAG_SEEDED_MASKS: u16 = 1 << 5;
/// §3.4 Flag bit 9 (version 2, with bits 0 and 1, not 5): the masks are the support of the
/// base (its non-zero weights); the sparsity section holds one kept count per masked tensor
/// (§4.6.2).
pub const FLAG_BASE_MASKS: u16 = 1 << 9;
/// §3.4 The flags this implementation understands in a version-2 file.
pub const KNOWN_FLAGS_V2: u16 = KNOWN_FLAGS;
/// §3.3 Modality code for images (the only modality of version 1; 2 is reserved for audio).
pub const MODALITY_IMAGE: u8 = 1;
/// §3.9 Entropy coder id of version 1: the adaptive frequency model of §5.
pub const CODER_ADAPTIVE: u8 = 0;

// §3 Field offsets and sizes of the fixed header.
/// §3.1 Offset of the magic (4 bytes).
pub const OFF_MAGIC: usize = 0;
/// §3.2 Offset of the version (u8).
pub const OFF_VERSION: usize = 4;
/// §3.3 Offset of the modality (u8).
pub const OFF_MODALITY: usize = 5;
/// §3.4 Offset of the flags (u16).
pub const OFF_FLAGS: usize = 6;
/// §3.5 Offset of the image width in pixels (u32).
pub const OFF_WIDTH: usize = 8;
/// §3.5 Offset of the image height in pixels (u32).
pub const OFF_HEIGHT: usize = 12;
/// §3.6 Offset of the architecture block ([`ARCH_BYTES`] bytes).
pub const OFF_ARCH: usize = 16;
/// §3.6 Size of the architecture block.
pub const ARCH_BYTES: usize = 12;
/// §3.7 Offset of the largest per-tensor quantization bit width (u8).
pub const OFF_BITS: usize = 28;
/// §3.8 Offset of the entropy coder id (u8).
pub const OFF_CODER: usize = 29;
/// §3 Size of the fixed header; the step table starts here.
pub const HEADER_BYTES: usize = 30;
/// §4.1 Size of one step-table entry (u16 mantissa, u8 exponent, u8 bits).
pub const STEP_BYTES: usize = 4;
/// §4.2 Size of the payload length field (u32).
pub const PAYLOAD_LEN_BYTES: usize = 4;
/// §4.2 Size of the length field (u32) in front of each payload group.
pub const GROUP_LEN_BYTES: usize = 4;
/// §4.3 Size of the trailing CRC32.
pub const CRC_BYTES: usize = 4;

/// §3.6 Largest accepted `depth`.
pub const MAX_DEPTH: u8 = 64;
/// §3.6 Largest accepted `pe_freqs`.
pub const MAX_PE_FREQS: u8 = 64;
/// §4.1 Largest accepted step exponent.
pub const MAX_STEP_EXPONENT: u8 = 64;
/// §3.7, §4.1 Accepted quantization bit widths (per tensor and in the header).
pub const BITS_RANGE: std::ops::RangeInclusive<u8> = 2..=16;

/// Network architecture, as stored in the header (§3.6). Pure integer arithmetic on it lives
/// here; the layer layout it implies is normative (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Arch {
    /// Input coordinate dimensions: 2 for images (1 is reserved for audio, not valid in v1).
    pub coord_dims: u8,
    /// Output channels: 1 (gray) or 3 (RGB); image grid files also 2 (gray + alpha) or 4 (RGBA).
    pub out_channels: u8,
    /// Hidden width (>= 1).
    pub width: u16,
    /// Number of sine layers (COIN's "layers"): the first plus `depth - 1` hidden ones.
    pub depth: u8,
    /// Fourier features per coordinate (0 = none).
    pub pe_freqs: u8,
    /// Ratio between successive PE frequencies, x1000 (2000 = octaves); >= 1.
    pub pe_base_milli: u16,
    /// SIREN w0 of the first sine layer (integer, >= 1).
    pub w0_first: u16,
    /// SIREN w0 of the hidden sine layers (integer, >= 1).
    pub w0_hidden: u16,
}

impl Arch {
    /// Network input size: `coord_dims * (1 + 2 * pe_freqs)`.
    pub fn in_features(&self) -> usize {
        usize::from(self.coord_dims) * (1 + 2 * usize::from(self.pe_freqs))
    }

    /// The `depth + 1` linear maps `(in, out)`: `in_features -> width`, `depth - 1` times
    /// `width -> width`, then `width -> out_channels` (§6.1).
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        let w = usize::from(self.width);
        let mut v = Vec::with_capacity(usize::from(self.depth) + 1);
        v.push((self.in_features(), w));
        for _ in 1..self.depth {
            v.push((w, w));
        }
        v.push((w, usize::from(self.out_channels)));
        v
    }

    /// Tensor lengths in file order `[W0, b0, W1, b1, ...]`: `W` has `in * out` values stored
    /// `[in][out]` row-major, `b` has `out` values (§6.1).
    pub fn tensor_lens(&self) -> Vec<usize> {
        self.layer_dims()
            .into_iter()
            .flat_map(|(i, o)| [i.saturating_mul(o), o])
            .collect()
    }

    /// Total number of parameters (saturating; [`Arch::validate`] bounds it).
    pub fn num_params(&self) -> usize {
        self.layer_dims().into_iter().fold(0usize, |acc, (i, o)| {
            acc.saturating_add(i.saturating_mul(o).saturating_add(o))
        })
    }

    /// Number of tensors: `2 * (depth + 1)`.
    pub fn num_tensors(&self) -> usize {
        2 * (usize::from(self.depth) + 1)
    }

    /// Parameter count in u64 with checked arithmetic (never overflows for u8/u16 fields).
    pub(crate) fn num_params_u64(&self) -> u64 {
        let i = u64::from(self.coord_dims) * (1 + 2 * u64::from(self.pe_freqs));
        let w = u64::from(self.width);
        let o = u64::from(self.out_channels);
        let hidden = u64::from(self.depth.saturating_sub(1));
        // <= 255*129*65535 + 255*65535^2 + ... < 2^41: no overflow possible.
        (i * w + w) + hidden * (w * w + w) + (w * o + o)
    }

    /// Checks every field's range (§3.6) and the parameter count against `limits`.
    ///
    /// # Errors
    /// [`FormatError::InvalidField`] for a value outside its range,
    /// [`FormatError::LimitExceeded`] when the parameter count exceeds `limits.max_params`.
    pub fn validate(&self, limits: &Limits) -> Result<(), FormatError> {
        let bad = |field, value: u64, expected| {
            Err(FormatError::InvalidField {
                field,
                value,
                expected,
            })
        };
        if self.coord_dims != 2 {
            return bad(
                "coord_dims",
                self.coord_dims.into(),
                "2 (images; 1 is audio, modality 2)",
            );
        }
        if !matches!(self.out_channels, 1 | 3) {
            return bad("out_channels", self.out_channels.into(), "1 or 3");
        }
        self.validate_net(limits)
    }

    /// The modality-independent checks of [`Arch::validate`]: width, depth, PE and w0 ranges
    /// and the parameter count (§3.6).
    ///
    /// # Errors
    /// As [`Arch::validate`].
    pub fn validate_net(&self, limits: &Limits) -> Result<(), FormatError> {
        let bad = |field, value: u64, expected| {
            Err(FormatError::InvalidField {
                field,
                value,
                expected,
            })
        };
        if self.width == 0 {
            return bad("width", 0, "1..=65535");
        }
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return bad("depth", self.depth.into(), "1..=64");
        }
        if self.pe_freqs > MAX_PE_FREQS {
            return bad("pe_freqs", self.pe_freqs.into(), "0..=64");
        }
        if self.pe_base_milli == 0 {
            return bad("pe_base_milli", 0, "1..=65535");
        }
        if self.w0_first == 0 {
            return bad("w0_first", 0, "1..=65535");
        }
        if self.w0_hidden == 0 {
            return bad("w0_hidden", 0, "1..=65535");
        }
        let n = self.num_params_u64();
        if n > limits.max_params {
            return Err(FormatError::LimitExceeded {
                what: "parameter count",
                value: n,
                limit: limits.max_params,
            });
        }
        Ok(())
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.push(self.coord_dims);
        out.push(self.out_channels);
        out.extend_from_slice(&self.width.to_le_bytes());
        out.push(self.depth);
        out.push(self.pe_freqs);
        out.extend_from_slice(&self.pe_base_milli.to_le_bytes());
        out.extend_from_slice(&self.w0_first.to_le_bytes());
        out.extend_from_slice(&self.w0_hidden.to_le_bytes());
    }

    pub(crate) fn read(b: &[u8; ARCH_BYTES]) -> Arch {
        // Fixed-size array: constant indices, checked at compile time.
        Arch {
            coord_dims: b[0],
            out_channels: b[1],
            width: u16::from_le_bytes([b[2], b[3]]),
            depth: b[4],
            pe_freqs: b[5],
            pe_base_milli: u16::from_le_bytes([b[6], b[7]]),
            w0_first: u16::from_le_bytes([b[8], b[9]]),
            w0_hidden: u16::from_le_bytes([b[10], b[11]]),
        }
    }
}

/// Quantization step (§4.1): `step = mantissa * 2^-exponent`, exactly representable in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    /// 1..=65535.
    pub mantissa: u16,
    /// 0..=64.
    pub exponent: u8,
}

impl Step {
    /// The step as f32: `mantissa * 2^-exponent`, exact for every valid step.
    pub fn to_f32(self) -> f32 {
        // Exact in f64 (2^-e is a power of two, mantissa has 16 bits); exact again in f32 for
        // exponent <= 64 (the value is a normal f32 with a 16-bit significand).
        (f64::from(self.mantissa) * (-f64::from(self.exponent)).exp2()) as f32
    }

    /// Nearest representable step to `x` with the mantissa normalised into `2^15..2^16` where
    /// possible (the exponent is clamped to `0..=64`). Not a number or `x <= 0` gives the
    /// smallest step (1, 64); values above 65535 give (65535, 0).
    pub fn from_f32(x: f32) -> Step {
        if x.is_nan() || x <= 0.0 {
            return Step {
                mantissa: 1,
                exponent: MAX_STEP_EXPONENT,
            };
        }
        let x = f64::from(x);
        for e in 0..=MAX_STEP_EXPONENT {
            let m = (x * f64::from(e).exp2()).round();
            if m >= 32768.0 || e == MAX_STEP_EXPONENT {
                // For the first e reaching 2^15, x * 2^(e-1) < 32767.5, so m <= 65535 unless
                // e == 0 (clamped). Infinity also lands here with e == 0.
                return Step {
                    mantissa: m.clamp(1.0, 65535.0) as u16,
                    exponent: e,
                };
            }
        }
        Step {
            mantissa: 1,
            exponent: MAX_STEP_EXPONENT,
        }
    }

    fn validate(self) -> Result<(), FormatError> {
        if self.mantissa == 0 {
            return Err(FormatError::InvalidField {
                field: "step mantissa",
                value: 0,
                expected: "1..=65535",
            });
        }
        if self.exponent > MAX_STEP_EXPONENT {
            return Err(FormatError::InvalidField {
                field: "step exponent",
                value: self.exponent.into(),
                expected: "0..=64",
            });
        }
        Ok(())
    }
}

/// One quantized tensor: `weight[i] = symbols[i] as f32 * step.to_f32()` (§6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QTensor {
    pub step: Step,
    /// Bit width of this tensor (2..=16, §4.1): every symbol lies in
    /// `-(2^(bits-1)-1)..=2^(bits-1)-1` ([`max_abs_for_bits`]).
    pub bits: u8,
    pub symbols: Vec<i32>,
}

impl QTensor {
    /// The f32 weights, exactly as §6.2 defines them (one IEEE-754 binary32 multiply each).
    pub fn dequantize(&self) -> Vec<f32> {
        let s = self.step.to_f32();
        self.symbols.iter().map(|&q| q as f32 * s).collect()
    }
}

/// A complete `.inr` file in memory (modality image in v1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InrFile {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    pub arch: Arch,
    /// The header bit width (§3.7): MUST equal the maximum of the tensors' `bits` (the writer
    /// rejects a mismatch, the reader too).
    pub bits: u8,
    /// Exactly `arch.tensor_lens()` in order and length.
    pub tensors: Vec<QTensor>,
    /// The meta-learned base the tensors are residuals from (§4.5): its id
    /// ([`crate::base::Base::id`]), or `None` for weights coded as they are.
    pub base_id: Option<u64>,
    /// Sparsity masks (§4.6): either empty (no mask section, flag bit 1 clear) or one entry
    /// per tensor, `Some(keep)` with `keep.len()` equal to the tensor length for a masked
    /// tensor. A pruned element (`keep[i] == false`) MUST have symbol 0 and is not coded in
    /// the payload. All entries `None` is the same as empty.
    pub masks: Vec<Option<Vec<bool>>>,
    /// Seeded masks (§4.6.1, flag bit 5): every mask is `{i : seed_hash(t, i) < tau_t}` and
    /// the file stores only `tau_t`. The writer rejects a mask of no such form
    /// ([`FormatError::MaskNotSeeded`]; [`seeded_threshold`] tells). Ignored without masks.
    pub seeded_masks: bool,
    /// Base masks (§4.6.2, flag bit 9): every mask is the support of the base (its non-zero
    /// weights, [`base_support`]) and the file stores only the kept counts. Needs `base_id`;
    /// the writer cannot check the masks against the base (the encoder builds them from it).
    /// Ignored without masks.
    pub base_masks: bool,
    /// Codebooks (§4.7, weight sharing): either empty (no codebook section, flag bit 4 clear)
    /// or one entry per tensor, `Some(codebook)` for a tensor whose symbols are indices into
    /// it (each symbol MUST lie in [`Codebook::symbol_range`]). All entries `None` is the
    /// same as empty.
    pub codebooks: Vec<Option<Codebook>>,
}

impl InrFile {
    /// The f32 weights of tensor `t`, exactly as §6.2 defines them: `symbol · step`, or
    /// `centroid · step` for a tensor with a codebook (one binary32 multiply each). Empty for
    /// an index out of range.
    pub fn tensor_weights(&self, t: usize) -> Vec<f32> {
        let Some(q) = self.tensors.get(t) else {
            return Vec::new();
        };
        match self.codebooks.get(t) {
            Some(Some(cb)) => {
                let s = q.step.to_f32();
                q.symbols
                    .iter()
                    .map(|&v| cb.centroid(v).unwrap_or(0) as f32 * s)
                    .collect()
            }
            _ => q.dequantize(),
        }
    }

    /// All weights in tensor order (§6.1), as [`InrFile::tensor_weights`].
    pub fn weights(&self) -> Vec<f32> {
        (0..self.tensors.len())
            .flat_map(|t| self.tensor_weights(t))
            .collect()
    }
}

/// Decoder limits, checked before anything is allocated from header values (§7).
///
/// The defaults decode every file an encoder may write (encoders MUST NOT write files the
/// default limits reject, §7); callers may lower them for untrusted input or raise them
/// (`inr decode --max-pixels N --max-params N ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `width * height` of the coded image, and of the rendered output (the decoder
    /// checks a requested `--size` against it too).
    pub max_pixels: u64,
    /// Largest width or height.
    pub max_dim: u32,
    /// Largest network parameter count (bounds the entropy decoder's work and memory).
    pub max_params: u64,
    /// Largest latent count of an image grid file's pyramid (all levels, §13.4): it bounds the
    /// latent decoder's work and memory as `max_params` does the network's.
    pub max_latents: u64,
    /// Largest accepted file size in bytes.
    pub max_file_bytes: u64,
    /// Largest length-prefixed section (the payload, each payload group; §4.2) in bytes.
    pub max_section_bytes: u64,
    /// Largest rendering work, in output pixels x network parameters (multiply-adds): a
    /// hostile header pairing a large network with a large image must not hang the decoder.
    pub max_work: u64,
    /// Largest number of audio samples, frames x channels (modality 2, format v2), checked by
    /// the audio reader before decoding. Image files carry no samples.
    pub max_samples: u64,
}

impl Limits {
    /// Default largest width or height.
    pub const DEFAULT_MAX_DIM: u32 = 65535;
    /// Default largest pixel count: 2^28 (16384 x 16384).
    pub const DEFAULT_MAX_PIXELS: u64 = 1 << 28;
    /// Default largest parameter count: 2^24 (about 16.8M; the `huge` preset has about 60k).
    pub const DEFAULT_MAX_PARAMS: u64 = 1 << 24;
    /// Default largest latent count of an image grid file: 2^26 (about 67M; a pyramid has
    /// about 4/3 latents per pixel, so this is about 50 Mpx; 256 MiB of decoded latents).
    pub const DEFAULT_MAX_LATENTS: u64 = 1 << 26;
    /// Default largest file: 256 MiB.
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 << 20;
    /// Default largest section: 64 MiB (2^24 parameters at 16 bits need at most 32 MiB).
    pub const DEFAULT_MAX_SECTION_BYTES: u64 = 64 << 20;
    /// Default largest rendering work: 2^40 multiply-adds (about a minute on 2 cores; a
    /// 768x512 image with the `huge` preset needs 2.6e10).
    pub const DEFAULT_MAX_WORK: u64 = 1 << 40;
    /// Default largest audio sample count: 2^32 (about 27 hours at 44.1 kHz).
    pub const DEFAULT_MAX_SAMPLES: u64 = 1 << 32;

    /// Checks a rendering request: `width x height` output pixels (each side >= 1, at most
    /// `max_pixels` in total) with a network of `params` parameters (at most `max_work`
    /// pixel-parameter products).
    ///
    /// # Errors
    /// [`FormatError::InvalidField`] for a zero side, [`FormatError::LimitExceeded`] otherwise.
    pub fn check_render(&self, width: u32, height: u32, params: u64) -> Result<(), FormatError> {
        for (field, v) in [("output width", width), ("output height", height)] {
            if v == 0 {
                return Err(FormatError::InvalidField {
                    field,
                    value: 0,
                    expected: ">= 1",
                });
            }
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(FormatError::LimitExceeded {
                what: "output pixel count",
                value: pixels,
                limit: self.max_pixels,
            });
        }
        let work = pixels.saturating_mul(params);
        if work > self.max_work {
            return Err(FormatError::LimitExceeded {
                what: "rendering work (output pixels x parameters)",
                value: work,
                limit: self.max_work,
            });
        }
        Ok(())
    }
}

impl Default for Limits {
    /// The `DEFAULT_*` constants: 65535 per side, 2^28 pixels, 2^24 parameters, 2^26 grid
    /// latents, 256 MiB per file, 64 MiB per section, 2^40 multiply-adds of rendering, 2^32
    /// audio samples.
    fn default() -> Self {
        Limits {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            max_dim: Self::DEFAULT_MAX_DIM,
            max_params: Self::DEFAULT_MAX_PARAMS,
            max_latents: Self::DEFAULT_MAX_LATENTS,
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            max_section_bytes: Self::DEFAULT_MAX_SECTION_BYTES,
            max_work: Self::DEFAULT_MAX_WORK,
            max_samples: Self::DEFAULT_MAX_SAMPLES,
        }
    }
}

/// Errors of the container layer. Each message says what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file does not start with [`MAGIC`].
    #[error(
        "not an .inr file: expected magic bytes 89 49 4E 52 (\"\\x89INR\"), found {found:02X?}"
    )]
    BadMagic { found: [u8; 4] },
    /// The version byte is not [`VERSION`].
    #[error("unsupported .inr format version {found} (this decoder reads versions 1 and 2)")]
    UnsupportedVersion { found: u8 },
    /// Flag bits this version does not define are set.
    #[error("unknown header flags 0x{flags:04X} (expected only bits 0x{known:04X} in version {version})")]
    UnknownFlags { flags: u16, known: u16, version: u8 },
    /// The file ends before a section is complete.
    #[error("truncated file: the {what} needs {needed} bytes, but only {available} remain")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    /// The stored CRC32 does not match the file contents.
    #[error(
        "CRC32 mismatch: stored 0x{stored:08X}, computed 0x{computed:08X} (the file is damaged)"
    )]
    CrcMismatch { stored: u32, computed: u32 },
    /// A header field is outside its valid range.
    #[error("invalid {field} = {value} (expected {expected})")]
    InvalidField {
        field: &'static str,
        value: u64,
        expected: &'static str,
    },
    /// A header value exceeds the decoder's [`Limits`].
    #[error("{what} = {value} exceeds the limit {limit}")]
    LimitExceeded {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// Bytes follow the CRC.
    #[error("{count} unexpected bytes after the CRC32 (expected the file to end there)")]
    TrailingBytes { count: u64 },
    /// (Writer) the number of tensors does not match the architecture.
    #[error("expected {expected} tensors for this architecture, found {found}")]
    TensorCount { expected: usize, found: usize },
    /// (Writer) a tensor's length does not match the architecture.
    #[error("tensor {index} has {found} values, expected {expected} for this architecture")]
    TensorLength {
        index: usize,
        expected: usize,
        found: usize,
    },
    /// The payload groups (§4.2) do not fill the payload exactly.
    #[error(
        "payload groups end after {used} of {len} payload bytes \
         (expected one group per distinct tensor bit width, filling the payload exactly)"
    )]
    PayloadGroups { used: u64, len: u64 },
    /// The payload is larger than the u32 length field allows.
    #[error("entropy payload of {len} bytes does not fit the u32 length field (expected < 4 GiB)")]
    PayloadTooLarge { len: u64 },
    /// (Writer) the masks do not match the tensors (§4.6).
    #[error("mask of tensor {index} has {found} entries, expected {expected} (one per value)")]
    MaskLength {
        index: usize,
        expected: usize,
        found: usize,
    },
    /// (Writer) a pruned element has a non-zero symbol (§4.6).
    #[error(
        "tensor {tensor}, index {index} is pruned by its mask but has symbol {value} (expected 0)"
    )]
    MaskedNonZero {
        tensor: usize,
        index: usize,
        value: i32,
    },
    /// (Writer) a mask of a file with seeded masks is not of the seeded form (§4.6.1).
    #[error("mask of tensor {tensor} is not a seeded mask (keep = seed_hash < threshold, §4.6.1)")]
    MaskNotSeeded { tensor: usize },
    /// (Reader) the masks of the file are the support of its base (§4.6.2): it can only be
    /// read with that base's weights ([`read_file_with_base`]).
    #[error("the masks of this file are the support of base {id:016x}: read it with that base")]
    BaseMasksNeedBase { id: u64 },
    /// The entropy-coded payload is invalid (or, when writing, a symbol is out of range).
    #[error("entropy payload: {0}")]
    Entropy(#[from] EntropyError),
    /// A codebook (§4.7) is malformed.
    #[error("codebook of tensor {tensor}: invalid {problem} (value {value})")]
    Codebook {
        tensor: usize,
        problem: &'static str,
        value: u64,
    },
    /// A symbol of a tensor with a codebook is outside the codebook (§4.7).
    #[error(
        "tensor {tensor}, index {index}: symbol {value} is outside the tensor's codebook (§4.7)"
    )]
    CodebookIndex {
        tensor: usize,
        index: usize,
        value: i32,
    },
}

/// Header and section table of a file, without entropy decoding (for `inr info [--json]`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileInfo {
    pub version: u8,
    /// Header flags (§3.4).
    pub flags: u16,
    /// Id of the base the weights are residuals from (§4.5), as 16 hex digits.
    pub base_id: Option<String>,
    /// "image" in version 1.
    pub modality: &'static str,
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub arch: Arch,
    pub num_params: u64,
    /// Header bit width: the maximum of `tensor_bits`.
    pub bits: u8,
    /// Entropy coder id (0 = adaptive frequency model, §5).
    pub coder: u8,
    pub num_tensors: usize,
    /// Per-tensor quantization steps, in tensor order.
    pub steps: Vec<Step>,
    /// Per-tensor bit widths, in tensor order.
    pub tensor_bits: Vec<u8>,
    /// The payload groups (§4.2), in file order (ascending bits).
    pub groups: Vec<GroupInfo>,
    /// Fixed header (§3).
    pub header_bytes: u64,
    /// Step table, payload length field and the group length fields (§4.1, §4.2).
    pub side_info_bytes: u64,
    /// Entropy-coded bytes of all groups (§5), without their length fields.
    pub payload_bytes: u64,
    /// Trailing CRC32 (§4.3).
    pub crc_bytes: u64,
    pub total_bytes: u64,
    /// `8 * total_bytes / (width * height)`; for audio, bits per coded sample
    /// (`8 * total_bytes / (frames * channels)`).
    pub bpp: f64,
    /// The audio section and derived figures (modality 2 only, §11).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioInfo>,
    /// The sparsity section (§4.6), when flag bit 1 is set.
    pub sparsity: Option<SparsityInfo>,
    /// The codebook section (§4.7), when flag bit 4 is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codebooks: Option<CodebookInfo>,
    /// The modulation section (§12), for a modulation-mode file (flag bit 2). Then
    /// `num_params` is the number of latents, `steps`/`tensor_bits`/`num_tensors` describe the
    /// latent channels and `arch` is the base network's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modulation: Option<ModInfo>,
    /// The latent pyramid (§13), for a grid-mode file (flag bit 3). Then `num_params` counts
    /// the synthesis parameters and the latents, `steps`/`tensor_bits`/`num_tensors` describe
    /// the synthesis tensors followed by the latent levels, and `arch.coord_dims` is the
    /// number of levels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grid: Option<GridInfo>,
}

/// Summary of the sparsity masks of a file (§4.6), decoded by [`inspect`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct SparsityInfo {
    /// Bytes of the whole section: presence bitmap, length field and mask stream.
    pub section_bytes: u64,
    /// Bytes of the entropy-coded mask stream (§5.8); 0 for seeded masks.
    pub mask_stream_bytes: u64,
    /// The masks are seeded (§4.6.1): the section holds one threshold per masked tensor.
    pub seeded: bool,
    /// The masks are the base's support (§4.6.2): the section holds one kept count per masked
    /// tensor (what [`inspect`] reports without the base; the CSR comparison is then NaN).
    pub from_base: bool,
    /// Number of masked tensors.
    pub masked_tensors: usize,
    /// Per tensor, in tensor order: kept values / values (1 for an unmasked tensor).
    pub tensor_density: Vec<f64>,
    /// Values in the masked tensors.
    pub masked_values: u64,
    /// Kept values in the masked tensors (coded in the payload).
    pub kept_values: u64,
    /// `kept_values / masked_values`.
    pub density: f64,
    /// Mask bits (the stream, or the thresholds of seeded masks) per kept value.
    pub mask_bits_per_kept: f64,
    /// For comparison: bits per kept value of Deep Compression's CSR relative indices with
    /// 5-bit gaps (their fully-connected setting), fillers included, before Huffman coding.
    pub csr5_bits_per_kept: f64,
}

/// Summary of the codebook section of a file (§4.7), read by [`inspect`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct CodebookInfo {
    /// Bytes of the whole section: presence bitmap and codebooks.
    pub section_bytes: u64,
    /// Per tensor, in tensor order: the number of centroids `k` (0 without a codebook).
    pub sizes: Vec<usize>,
}

/// One payload group as reported by [`inspect`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupInfo {
    /// Bit width shared by the group's tensors.
    pub bits: u8,
    /// Number of tensors in the group.
    pub tensors: usize,
    /// Entropy-coded bytes of the group (without its 4-byte length field).
    pub bytes: u64,
}

/// A structurally parsed file (CRC verified, all fields validated), payload not decoded.
struct Parsed<'a> {
    version: u8,
    flags: u16,
    base_id: Option<u64>,
    /// §4.6 Per tensor: does it have a mask (empty without the sparsity section).
    mask_present: Vec<bool>,
    /// §4.6 The coded mask stream (empty without the sparsity section or with seeded masks).
    mask_stream: &'a [u8],
    /// §4.6.1 One threshold per masked tensor, in tensor order (empty unless flag bit 5).
    mask_seeds: Vec<u32>,
    /// §4.6.2 One kept count per masked tensor, in tensor order (empty unless flag bit 9).
    mask_counts: Vec<u32>,
    /// §4.7 Per tensor: its codebook (empty without the codebook section).
    codebooks: Vec<Option<Codebook>>,
    width: u32,
    height: u32,
    arch: Arch,
    bits: u8,
    coder: u8,
    steps: Vec<Step>,
    tensor_bits: Vec<u8>,
    /// `(bits, entropy-coded bytes)` per distinct bit width, ascending (§4.2).
    groups: Vec<(u8, &'a [u8])>,
}

/// Bounds-checked little-endian reader over the file bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        let available = self.bytes.len().saturating_sub(self.pos);
        if n > available {
            return Err(FormatError::Truncated {
                what,
                needed: n as u64,
                available: available as u64,
            });
        }
        let s = self.bytes.get(self.pos..self.pos + n).unwrap_or(&[]);
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FormatError> {
        let s = self.take(N, what)?;
        <[u8; N]>::try_from(s).map_err(|_| FormatError::Truncated {
            what,
            needed: N as u64,
            available: s.len() as u64,
        })
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, FormatError> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    /// A `u32` length field that must count whole 32-bit words (a multiple of 4).
    fn word_len(&mut self, what: &'static str) -> Result<u32, FormatError> {
        let len = self.u32(what)?;
        if len % 4 != 0 {
            return Err(FormatError::InvalidField {
                field: what,
                value: len.into(),
                expected: "a multiple of 4 (whole 32-bit words)",
            });
        }
        Ok(len)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
}

/// Largest symbol magnitude for `bits` (2..=16): `2^(bits-1) - 1` (`bits` is clamped into
/// 2..=16 first).
pub fn max_abs_for_bits(bits: u8) -> u32 {
    (1u32 << (bits.clamp(2, 16) - 1)) - 1
}

/// The distinct values of `tensor_bits`, ascending: the payload groups in file order (§4.2).
fn group_bits(tensor_bits: &[u8]) -> Vec<u8> {
    let mut v = tensor_bits.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Indices (file order) and lengths of the tensors whose bit width is `bits`.
fn group_members(tensor_bits: &[u8], lens: &[usize], bits: u8) -> (Vec<usize>, Vec<usize>) {
    tensor_bits
        .iter()
        .zip(lens)
        .enumerate()
        .filter(|&(_, (&b, _))| b == bits)
        .map(|(i, (_, &n))| (i, n))
        .unzip()
}

fn validate_dims(width: u32, height: u32, limits: &Limits) -> Result<(), FormatError> {
    for (field, v) in [("image width", width), ("image height", height)] {
        if v == 0 {
            return Err(FormatError::InvalidField {
                field,
                value: 0,
                expected: ">= 1",
            });
        }
        if v > limits.max_dim {
            return Err(FormatError::LimitExceeded {
                what: field,
                value: v.into(),
                limit: limits.max_dim.into(),
            });
        }
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(FormatError::LimitExceeded {
            what: "pixel count",
            value: pixels,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// A length-prefixed section of `len` bytes against [`Limits::max_section_bytes`].
fn check_section(what: &'static str, len: u64, limits: &Limits) -> Result<(), FormatError> {
    if len > limits.max_section_bytes {
        return Err(FormatError::LimitExceeded {
            what,
            value: len,
            limit: limits.max_section_bytes,
        });
    }
    Ok(())
}

fn validate_bits(field: &'static str, bits: u8) -> Result<(), FormatError> {
    if !BITS_RANGE.contains(&bits) {
        return Err(FormatError::InvalidField {
            field,
            value: bits.into(),
            expected: "2..=16",
        });
    }
    Ok(())
}

/// §3.7: the header bit width equals the largest tensor bit width.
fn validate_header_bits(bits: u8, tensor_bits: &[u8]) -> Result<(), FormatError> {
    let max = tensor_bits.iter().copied().max().unwrap_or(0);
    if bits != max {
        return Err(FormatError::InvalidField {
            field: "bits",
            value: bits.into(),
            expected: "the maximum of the tensors' bit widths in the step table",
        });
    }
    Ok(())
}

/// The fixed-header fields after the version byte (§3): shared by the image and audio layouts.
struct FixedHeader {
    modality: u8,
    flags: u16,
    width: u32,
    height: u32,
    arch: Arch,
    bits: u8,
    coder: u8,
}

/// Reads the fixed-header fields at offsets 5..30 (§3); no validation.
fn read_fixed_header(r: &mut Reader<'_>) -> Result<FixedHeader, FormatError> {
    let rest = r.take(HEADER_BYTES - OFF_MODALITY, "fixed header")?;
    let mut h = Reader {
        bytes: rest,
        pos: 0,
    };
    Ok(FixedHeader {
        modality: h.u8("modality")?,
        flags: h.u16("flags")?,
        width: h.u32("width")?,
        height: h.u32("height")?,
        arch: Arch::read(&h.array::<ARCH_BYTES>("architecture")?),
        bits: h.u8("bits")?,
        coder: h.u8("coder")?,
    })
}

/// Reads the payload length, the payload and the CRC32 that end every file (§4.2, §4.3),
/// rejects trailing bytes and checks the CRC over everything before it. Returns the payload.
fn read_payload_and_crc<'a>(r: &mut Reader<'a>, bytes: &'a [u8]) -> Result<&'a [u8], FormatError> {
    let payload_len = r.u32("payload length")?;
    let payload = r.take(payload_len as usize, "entropy payload")?;
    let body_end = r.pos;
    let stored = r.u32("CRC32")?;
    let trailing = bytes.len().saturating_sub(r.pos);
    if trailing != 0 {
        return Err(FormatError::TrailingBytes {
            count: trailing as u64,
        });
    }
    let computed = crc32fast::hash(bytes.get(..body_end).unwrap_or(&[]));
    if stored != computed {
        return Err(FormatError::CrcMismatch { stored, computed });
    }
    Ok(payload)
}

/// Codes `tensors` as the payload groups of §4.2 (one group per distinct bit width, ascending,
/// its tensors in order; each a `u32` length and one §5 stream). Shared by the modulation
/// (§12) and grid (§13) layouts. Symbol errors name the tensor's index in `tensors`.
fn write_groups(tensors: &[&QTensor], limits: &Limits) -> Result<Vec<u8>, FormatError> {
    let symbols: Vec<&[i32]> = tensors.iter().map(|t| t.symbols.as_slice()).collect();
    let bits: Vec<u8> = tensors.iter().map(|t| t.bits).collect();
    write_symbol_groups(&symbols, &bits, limits)
}

/// The §4.2 payload groups of `symbols[i]` coded at `bits[i]` (the symbols each tensor codes:
/// its kept ones under a mask, §4.6). Every group is checked against the section limit, as
/// the decoder checks it. Symbol errors name the tensor's index in `symbols`.
fn write_symbol_groups(
    symbols: &[&[i32]],
    bits: &[u8],
    limits: &Limits,
) -> Result<Vec<u8>, FormatError> {
    let lens: Vec<usize> = symbols.iter().map(|t| t.len()).collect();
    let mut payload = Vec::new();
    for b in group_bits(bits) {
        let (members, _) = group_members(bits, &lens, b);
        let refs: Vec<&[i32]> = members
            .iter()
            .filter_map(|&i| symbols.get(i).copied())
            .collect();
        let group = entropy::encode_tensors(&refs, max_abs_for_bits(b)).map_err(|e| match e {
            EntropyError::SymbolOutOfRange {
                tensor,
                index,
                value,
                max_abs,
            } => EntropyError::SymbolOutOfRange {
                tensor: members.get(tensor).copied().unwrap_or(tensor),
                index,
                value,
                max_abs,
            },
            other => other,
        })?;
        check_section("payload group", group.len() as u64, limits)?;
        let len = u32::try_from(group.len()).map_err(|_| FormatError::PayloadTooLarge {
            len: group.len() as u64,
        })?;
        payload.extend_from_slice(&len.to_le_bytes());
        payload.extend_from_slice(&group);
    }
    Ok(payload)
}

/// The coding fields shared by the modulation (§12.5) and grid (§13.4) layouts, in this
/// order: header bits B, coder 0, payload length (a multiple of 4, within the section limit),
/// every step-table entry (`bits_field` names their bit width), and B = the largest entry bit
/// width. Returns the steps and bit widths.
fn validate_coding(
    bits: u8,
    coder: u8,
    payload_len: usize,
    step_bytes: &[u8],
    bits_field: &'static str,
    limits: &Limits,
) -> Result<(Vec<Step>, Vec<u8>), FormatError> {
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
            value: payload_len as u64,
            expected: "a multiple of 4 (whole 32-bit words)",
        });
    }
    check_section("payload", payload_len as u64, limits)?;
    let (steps, tensor_bits) = read_step_table(step_bytes, bits_field)?;
    validate_header_bits(bits, &tensor_bits)?;
    Ok((steps, tensor_bits))
}

/// Parses a step table (§4.1 entries): validates every step and bit width (`bits_field`
/// names the latter in errors).
fn read_step_table(
    step_bytes: &[u8],
    bits_field: &'static str,
) -> Result<(Vec<Step>, Vec<u8>), FormatError> {
    let n = step_bytes.len() / STEP_BYTES;
    let mut steps = Vec::with_capacity(n);
    let mut tensor_bits = Vec::with_capacity(n);
    for c in step_bytes.chunks_exact(STEP_BYTES) {
        let &[lo, hi, exponent, tb] = c else {
            continue; // unreachable: chunks_exact yields exactly STEP_BYTES bytes
        };
        let s = Step {
            mantissa: u16::from_le_bytes([lo, hi]),
            exponent,
        };
        s.validate()?;
        validate_bits(bits_field, tb)?;
        steps.push(s);
        tensor_bits.push(tb);
    }
    Ok((steps, tensor_bits))
}

/// Splits a payload into its groups (§4.2): length fields that fit, multiples of 4, within
/// the section limit, filling the payload exactly.
fn split_groups<'a>(
    payload: &'a [u8],
    tensor_bits: &[u8],
    limits: &Limits,
) -> Result<Vec<(u8, &'a [u8])>, FormatError> {
    let mut g = Reader {
        bytes: payload,
        pos: 0,
    };
    let groups = read_groups(&mut g, tensor_bits, limits)?;
    if g.pos != payload.len() {
        return Err(FormatError::PayloadGroups {
            used: g.pos as u64,
            len: payload.len() as u64,
        });
    }
    Ok(groups)
}

/// Reads the groups of [`split_groups`] from `g` without requiring them to end the payload.
fn read_groups<'a>(
    g: &mut Reader<'a>,
    tensor_bits: &[u8],
    limits: &Limits,
) -> Result<Vec<(u8, &'a [u8])>, FormatError> {
    let mut groups = Vec::new(); // <= 15 entries
    for b in group_bits(tensor_bits) {
        let len = g.word_len("payload group length")?;
        let group = g.take(len as usize, "payload group")?;
        check_section("payload group", u64::from(len), limits)?;
        groups.push((b, group));
    }
    Ok(groups)
}

/// Entropy-decodes the groups of [`split_groups`]: tensor `i` gets `lens[i]` symbols.
fn decode_groups(
    groups: &[(u8, &[u8])],
    tensor_bits: &[u8],
    lens: &[usize],
) -> Result<Vec<Vec<i32>>, FormatError> {
    let mut symbols: Vec<Vec<i32>> = vec![Vec::new(); lens.len()];
    for &(b, group) in groups {
        let (members, member_lens) = group_members(tensor_bits, lens, b);
        let decoded = entropy::decode_tensors(group, &member_lens, max_abs_for_bits(b))?;
        for (i, s) in members.into_iter().zip(decoded) {
            if let Some(slot) = symbols.get_mut(i) {
                *slot = s;
            }
        }
    }
    Ok(symbols)
}

/// Per-group summary for [`inspect`]: bit width, tensor count and coded bytes.
fn group_infos(groups: &[(u8, &[u8])], tensor_bits: &[u8]) -> Vec<GroupInfo> {
    groups
        .iter()
        .map(|&(bits, g)| GroupInfo {
            bits,
            tensors: tensor_bits.iter().filter(|&&b| b == bits).count(),
            bytes: g.len() as u64,
        })
        .collect()
}

/// Decoder steps shared by every layout: the file-size limit, then the magic and the version
/// (§3.1, §3.2), so foreign and future files get a precise error. Returns the reader after
/// the version byte and the version.
fn read_prelude<'a>(bytes: &'a [u8], limits: &Limits) -> Result<(Reader<'a>, u8), FormatError> {
    let total = bytes.len() as u64;
    if total > limits.max_file_bytes {
        return Err(FormatError::LimitExceeded {
            what: "file size",
            value: total,
            limit: limits.max_file_bytes,
        });
    }
    let mut r = Reader { bytes, pos: 0 };
    let found: [u8; 4] = r.array("magic")?;
    if found != MAGIC {
        return Err(FormatError::BadMagic { found });
    }
    let version = r.u8("version byte")?;
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    Ok((r, version))
}

/// Appends the CRC32 of everything written so far (§4.3) and checks the file size against
/// `limits` (writers refuse files a decoder with those limits would reject).
fn finish_file(mut out: Vec<u8>, limits: &Limits) -> Result<Vec<u8>, FormatError> {
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let total = out.len() as u64;
    if total > limits.max_file_bytes {
        return Err(FormatError::LimitExceeded {
            what: "file size",
            value: total,
            limit: limits.max_file_bytes,
        });
    }
    Ok(out)
}

/// Parses and validates everything except the entropy payload (§7, decoder steps 1–6).
fn parse<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, FormatError> {
    // 1. File size, magic, then version, so foreign and future files get a precise error.
    let (mut r, version) = read_prelude(bytes, limits)?;
    // An audio file (§11) has another layout: say so instead of a structural error.
    if version == VERSION_AUDIO && bytes.get(OFF_MODALITY) == Some(&MODALITY_AUDIO) {
        return Err(FormatError::InvalidField {
            field: "modality",
            value: MODALITY_AUDIO.into(),
            expected: "1 (image); this is an audio file: decode it with the audio decoder",
        });
    }
    // 2. Structure: fixed header, step table, payload, CRC. Sizes depend on `depth` (<= 255,
    //    so the step table is at most 2048 bytes) and the payload length (checked against the
    //    bytes actually present).
    let FixedHeader {
        modality,
        flags,
        width,
        height,
        arch,
        bits,
        coder,
    } = read_fixed_header(&mut r)?;
    // A modulation-mode file (§12) has another layout: say so instead of a structural error.
    if version == VERSION_MOD && modality == MODALITY_IMAGE && flags & FLAG_MODULATIONS != 0 {
        let known = KNOWN_FLAGS | FLAG_MODULATIONS;
        if flags & !known != 0 {
            return Err(FormatError::UnknownFlags {
                flags,
                known,
                version,
            });
        }
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "no flag bit 2; this is a modulation-mode file: read it with the \
                       modulation reader (format::read_mod_file)",
        });
    }
    // A grid-mode file (§13) has another layout too.
    if version == VERSION_GRID
        && modality == MODALITY_IMAGE
        && flags & FLAG_GRID != 0
        && flags
            & !(KNOWN_FLAGS
                | FLAG_GRID
                | FLAG_GRID_PREDICT
                | FLAG_GRID_HEAD
                | FLAG_GRID_CONTEXTS
                | FLAG_GRID_BSPLINE)
            == 0
    {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "no flag bit 3; this is a grid-mode file: read it with the grid reader \
                       (format::read_grid_file)",
        });
    }
    let num_tensors = arch.num_tensors();
    let step_bytes = r.take(num_tensors * STEP_BYTES, "step table")?;
    let known = if version == 1 { 0 } else { KNOWN_FLAGS };
    if flags & !known != 0 {
        return Err(FormatError::UnknownFlags {
            flags,
            known,
            version,
        });
    }
    let base_id = if flags & FLAG_BASE != 0 {
        Some(u64::from_le_bytes(
            r.array::<BASE_REF_BYTES>("base reference")?,
        ))
    } else {
        None
    };
    if flags & FLAG_SEEDED_MASKS != 0 && flags & FLAG_SPARSE == 0 {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "flag bit 5 (seeded masks) only together with bit 1 (sparsity section)",
        });
    }
    if flags & FLAG_BASE_MASKS != 0
        && (flags & (FLAG_BASE | FLAG_SPARSE) != FLAG_BASE | FLAG_SPARSE
            || flags & FLAG_SEEDED_MASKS != 0)
    {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "flag bit 9 (base masks) only together with bits 0 and 1, without bit 5",
        });
    }
    let mut mask_seeds = Vec::new();
    let mut mask_counts = Vec::new();
    let (presence, mask_stream) = if flags & FLAG_SPARSE != 0 {
        let presence = r.take(num_tensors.div_ceil(8), "mask presence bitmap")?;
        if flags & FLAG_BASE_MASKS != 0 {
            // One kept count per set bit (as the thresholds of §4.6.1).
            let k: u32 = presence.iter().map(|b| b.count_ones()).sum();
            for _ in 0..k {
                mask_counts.push(r.u32("mask count")?);
            }
            (presence, &[][..])
        } else if flags & FLAG_SEEDED_MASKS != 0 {
            // One threshold per set bit (at most 8 * ceil(T/8); stray bits are rejected below).
            let k: u32 = presence.iter().map(|b| b.count_ones()).sum();
            for _ in 0..k {
                mask_seeds.push(r.u32("mask threshold")?);
            }
            (presence, &[][..])
        } else {
            let len = r.u32("mask stream length")?;
            (presence, r.take(len as usize, "mask stream")?)
        }
    } else {
        (&[][..], &[][..])
    };
    let codebooks = if flags & FLAG_CODEBOOK != 0 {
        codebook::read_codebooks(&mut r, num_tensors)?
    } else {
        Vec::new()
    };
    // 3. Payload, CRC and integrity.
    let payload = read_payload_and_crc(&mut r, bytes)?;
    let payload_len = payload.len() as u32; // read from a u32 field: exact
                                            // 4. Semantics (a hostile file can carry a valid CRC, so everything is checked).
    if modality != MODALITY_IMAGE {
        return Err(FormatError::InvalidField {
            field: "modality",
            value: modality.into(),
            expected: if modality == MODALITY_AUDIO && version == VERSION_AUDIO {
                "1 (image); this is an audio file: decode it with the audio decoder"
            } else {
                "1 (image) in version 1; 1 (image) or 2 (audio) in version 2"
            },
        });
    }
    let mask_present = parse_mask_presence(flags, presence, mask_stream, num_tensors)?;
    validate_dims(width, height, limits)?;
    arch.validate(limits)?;
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
    check_section("payload", u64::from(payload_len), limits)?;
    let mut steps = Vec::with_capacity(num_tensors); // <= 130 after validation
    let mut tensor_bits = Vec::with_capacity(num_tensors);
    for c in step_bytes.chunks_exact(STEP_BYTES) {
        let &[lo, hi, exponent, tb] = c else {
            continue; // unreachable: chunks_exact yields exactly STEP_BYTES bytes
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
    codebook::check_codebooks(&codebooks, &tensor_bits)?;
    // 5. Payload groups (§4.2): one per distinct bit width, ascending, filling the payload.
    let mut g = Reader {
        bytes: payload,
        pos: 0,
    };
    let mut groups = Vec::new(); // <= 15 entries
    for b in group_bits(&tensor_bits) {
        let len = g.u32("payload group length")?;
        if len % 4 != 0 {
            return Err(FormatError::InvalidField {
                field: "payload group length",
                value: len.into(),
                expected: "a multiple of 4 (whole 32-bit words)",
            });
        }
        let group = g.take(len as usize, "payload group")?;
        // Structure first (a length beyond the payload is "truncated"), then the limit,
        // before the entropy decoder allocates anything from the group.
        check_section("payload group", u64::from(len), limits)?;
        groups.push((b, group));
    }
    if g.pos != payload.len() {
        return Err(FormatError::PayloadGroups {
            used: g.pos as u64,
            len: payload.len() as u64,
        });
    }
    Ok(Parsed {
        version,
        flags,
        base_id,
        mask_present,
        mask_stream,
        mask_seeds,
        mask_counts,
        codebooks,
        width,
        height,
        arch,
        bits,
        coder,
        steps,
        tensor_bits,
        groups,
    })
}

/// Serialises `f` (§3–§5), validating its consistency first.
///
/// # Errors
/// [`FormatError::InvalidField`] / [`FormatError::LimitExceeded`] for header values a default
/// decoder would reject ([`Limits::default`]) — including a tensor `bits` outside 2..=16 and a
/// header `bits` different from the largest tensor `bits` —, [`FormatError::TensorCount`] /
/// [`FormatError::TensorLength`] when the tensors do not match `arch`, and
/// [`FormatError::Entropy`] for a symbol outside its tensor's `bits` range (the error names the
/// tensor by its file index).
///
/// # Panics
/// Never.
pub fn write_file(f: &InrFile) -> Result<Vec<u8>, FormatError> {
    let limits = Limits::default();
    validate_dims(f.width, f.height, &limits)?;
    f.arch.validate(&limits)?;
    validate_bits("bits", f.bits)?;
    let lens = f.arch.tensor_lens();
    if f.tensors.len() != lens.len() {
        return Err(FormatError::TensorCount {
            expected: lens.len(),
            found: f.tensors.len(),
        });
    }
    for (index, (t, &n)) in f.tensors.iter().zip(&lens).enumerate() {
        t.step.validate()?;
        validate_bits("tensor bits", t.bits)?;
        if t.symbols.len() != n {
            return Err(FormatError::TensorLength {
                index,
                expected: n,
                found: t.symbols.len(),
            });
        }
    }
    let tensor_bits: Vec<u8> = f.tensors.iter().map(|t| t.bits).collect();
    validate_header_bits(f.bits, &tensor_bits)?;
    // §4.6: masked tensors code only their kept symbols.
    let sparse = write_masks_prepare(f)?;
    // §4.7: a tensor with a codebook codes indices inside it.
    let codebooks = codebook::write_codebooks(&f.codebooks, &tensor_bits)?;
    for (t, cb) in f.codebooks.iter().enumerate() {
        if let (Some(cb), Some(q)) = (cb, f.tensors.get(t)) {
            codebook::map_symbols(t, cb, &q.symbols)?;
        }
    }
    let coded: Vec<std::borrow::Cow<'_, [i32]>> = f
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| match f.masks.get(i) {
            Some(Some(keep)) => std::borrow::Cow::Owned(
                t.symbols
                    .iter()
                    .zip(keep)
                    .filter(|&(_, &k)| k)
                    .map(|(&s, _)| s)
                    .collect(),
            ),
            _ => std::borrow::Cow::Borrowed(t.symbols.as_slice()),
        })
        .collect();

    // §4.2: one group per distinct bit width, ascending; tensors in file order inside a group.
    let coded: Vec<&[i32]> = coded.iter().map(|t| t.as_ref()).collect();
    let payload = write_symbol_groups(&coded, &tensor_bits, &limits)?;
    let payload_len = u32::try_from(payload.len()).map_err(|_| FormatError::PayloadTooLarge {
        len: payload.len() as u64,
    })?;

    let flags = if f.base_id.is_some() { FLAG_BASE } else { 0 }
        | match (&sparse, f.seeded_masks, f.base_masks) {
            (None, _, _) => 0,
            (Some(_), _, true) => FLAG_SPARSE | FLAG_BASE_MASKS,
            (Some(_), true, false) => FLAG_SPARSE | FLAG_SEEDED_MASKS,
            (Some(_), false, false) => FLAG_SPARSE,
        }
        | if codebooks.is_some() {
            FLAG_CODEBOOK
        } else {
            0
        };
    let mut out = Vec::with_capacity(
        HEADER_BYTES
            + STEP_BYTES * lens.len()
            + BASE_REF_BYTES
            + PAYLOAD_LEN_BYTES
            + payload.len()
            + CRC_BYTES,
    );
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(MODALITY_IMAGE);
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&f.width.to_le_bytes());
    out.extend_from_slice(&f.height.to_le_bytes());
    f.arch.write(&mut out);
    out.push(f.bits);
    out.push(CODER_ADAPTIVE);
    debug_assert_eq!(out.len(), HEADER_BYTES);
    for t in &f.tensors {
        out.extend_from_slice(&t.step.mantissa.to_le_bytes());
        out.push(t.step.exponent);
        out.push(t.bits);
    }
    if let Some(id) = f.base_id {
        out.extend_from_slice(&id.to_le_bytes());
    }
    if let Some(section) = &sparse {
        out.extend_from_slice(section);
    }
    if let Some(section) = &codebooks {
        out.extend_from_slice(section);
    }
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Exact size in bits of the file [`write_file`] produces for `f` (it serialises the file and
/// returns `8 * bytes`): the rate of a mixed-precision choice, side information included.
///
/// # Errors
/// As [`write_file`].
///
/// # Panics
/// Never.
pub fn estimate_file_bits(f: &InrFile) -> Result<u64, FormatError> {
    Ok(8 * write_file(f)?.len() as u64)
}

/// Parses and fully decodes a file (§7).
///
/// # Errors
/// Every malformed, truncated, damaged or over-limit input gives a [`FormatError`].
///
/// # Panics
/// Never, for any input.
pub fn read_file(bytes: &[u8], limits: &Limits) -> Result<InrFile, FormatError> {
    read_file_with_base(bytes, limits, None)
}

/// The coding mode of a file, from its header alone (no validation: [`read_file`] and its
/// siblings check it): `"grid"`, `"grid-shared"` (a grid file with a shared synthesis,
/// §13.8), `"modulations"` or `"weights"`, for images and audio alike (§11–§14); `None` when
/// the bytes do not start like an `.inr` file.
pub fn mode_name(bytes: &[u8]) -> Option<&'static str> {
    if bytes.get(..4) != Some(&MAGIC[..]) {
        return None;
    }
    let flags = u16::from_le_bytes([*bytes.get(OFF_FLAGS)?, *bytes.get(OFF_FLAGS + 1)?]);
    Some(if is_grid_file(bytes) {
        if flags & FLAG_BASE != 0 {
            "grid-shared"
        } else {
            "grid"
        }
    } else if is_audio_grid_file(bytes) {
        "grid"
    } else if is_modulation_file(bytes) || is_audio_modulation_file(bytes) {
        "modulations"
    } else {
        "weights"
    })
}

/// As [`read_file`]; `base` are the weights of the file's base (§4.5), needed by a file whose
/// masks are the base's support (§4.6.2, flag bit 9: without them such a file gives
/// [`FormatError::BaseMasksNeedBase`]) and ignored by any other.
///
/// # Errors
/// As [`read_file`]; for flag bit 9 also a `base` of another length than the header's
/// parameter count, or a kept count that is not the base support's.
///
/// # Panics
/// Never, for any input.
pub fn read_file_with_base(
    bytes: &[u8],
    limits: &Limits,
    base: Option<&[f32]>,
) -> Result<InrFile, FormatError> {
    let p = parse(bytes, limits)?;
    // Tensor lengths are bounded by limits.max_params (validated in `parse`).
    let lens = p.arch.tensor_lens();
    let masks = decode_mask_section(&p, base)?;
    // §4.6: a masked tensor codes only its kept values.
    let coded_lens: Vec<usize> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| match masks.get(i) {
            Some(Some(keep)) => keep.iter().filter(|&&k| k).count(),
            _ => n,
        })
        .collect();
    let mut symbols: Vec<Vec<i32>> = vec![Vec::new(); lens.len()];
    for &(b, group) in &p.groups {
        let (members, member_lens) = group_members(&p.tensor_bits, &coded_lens, b);
        let decoded = entropy::decode_tensors(group, &member_lens, max_abs_for_bits(b))?;
        for (i, s) in members.into_iter().zip(decoded) {
            if let Some(slot) = symbols.get_mut(i) {
                *slot = match masks.get(i) {
                    Some(Some(keep)) => scatter_kept(&s, keep),
                    _ => s,
                };
            }
        }
    }
    for (t, cb) in p.codebooks.iter().enumerate() {
        if let (Some(cb), Some(s)) = (cb, symbols.get(t)) {
            codebook::map_symbols(t, cb, s)?;
        }
    }
    let tensors = p
        .steps
        .into_iter()
        .zip(p.tensor_bits)
        .zip(symbols)
        .map(|((step, bits), symbols)| QTensor {
            step,
            bits,
            symbols,
        })
        .collect();
    Ok(InrFile {
        width: p.width,
        height: p.height,
        arch: p.arch,
        bits: p.bits,
        tensors,
        base_id: p.base_id,
        masks,
        seeded_masks: !p.mask_seeds.is_empty(),
        base_masks: p.flags & FLAG_BASE_MASKS != 0,
        codebooks: p.codebooks,
    })
}

/// Header and section sizes of a file, with [`Limits::default`], without entropy decoding.
/// The CRC, every header field and the payload group structure are verified.
///
/// # Errors
/// As [`read_file`], except that payload corruption the CRC does not reveal goes unnoticed.
///
/// # Panics
/// Never, for any input.
pub fn inspect(bytes: &[u8]) -> Result<FileInfo, FormatError> {
    inspect_with(bytes, &Limits::default())
}

/// As [`inspect`], with caller-chosen limits (e.g. raised by `inr info --max-params N`).
///
/// # Errors
/// As [`inspect`], with `limits` instead of the defaults.
///
/// # Panics
/// Never, for any input.
pub fn inspect_with(bytes: &[u8], limits: &Limits) -> Result<FileInfo, FormatError> {
    if is_audio_modulation_file(bytes) {
        return modulation::inspect_mod(bytes, limits);
    }
    if is_audio_grid_file(bytes) {
        return audio_grid::inspect_audio_grid(bytes, limits);
    }
    if peek_modality(bytes)? == MODALITY_AUDIO {
        return audio::inspect_audio(bytes);
    }
    if is_modulation_file(bytes) {
        return modulation::inspect_mod(bytes, limits);
    }
    if is_grid_file(bytes) {
        return grid::inspect_grid(bytes, limits);
    }
    let p = parse(bytes, limits)?;
    let total = bytes.len() as u64;
    let num_tensors = p.steps.len();
    let pixels = u64::from(p.width) * u64::from(p.height);
    let groups = group_infos(&p.groups, &p.tensor_bits);
    let payload_bytes: u64 = groups.iter().map(|g| g.bytes).sum();
    let sparsity = sparsity_info(&p)?;
    Ok(FileInfo {
        version: p.version,
        flags: p.flags,
        base_id: p.base_id.map(|id| format!("{id:016x}")),
        modality: "image",
        width: p.width,
        height: p.height,
        channels: p.arch.out_channels,
        arch: p.arch,
        num_params: p.arch.num_params_u64(),
        bits: p.bits,
        coder: p.coder,
        num_tensors,
        steps: p.steps,
        tensor_bits: p.tensor_bits,
        header_bytes: HEADER_BYTES as u64,
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
        bpp: 8.0 * total as f64 / pixels.max(1) as f64,
        audio: None,
        sparsity,
        codebooks: (!p.codebooks.is_empty()).then(|| CodebookInfo {
            section_bytes: codebook::section_bytes(&p.codebooks),
            sizes: p
                .codebooks
                .iter()
                .map(|c| c.as_ref().map_or(0, Codebook::len))
                .collect(),
        }),
        modulation: None,
        grid: None,
    })
}

/// The modality byte of a file (§3.3) after checking the magic and the version, without
/// validating anything else: lets a caller dispatch to the image or the audio decoder.
/// Version 1 files are images; version 2 files may be either.
///
/// # Errors
/// [`FormatError::BadMagic`], [`FormatError::UnsupportedVersion`], [`FormatError::Truncated`].
///
/// # Panics
/// Never.
pub fn peek_modality(bytes: &[u8]) -> Result<u8, FormatError> {
    let mut r = Reader { bytes, pos: 0 };
    let found: [u8; 4] = r.array("magic")?;
    if found != MAGIC {
        return Err(FormatError::BadMagic { found });
    }
    let version = r.u8("version byte")?;
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    r.u8("modality")
}

// ---------------------------------------------------------------------------------------------
// Sparsity section (§4.6, flag bit 1, version 2). Kept apart so that other sections merge
// cleanly.
// ---------------------------------------------------------------------------------------------

/// §4.6 Row length of each tensor for the mask contexts (§5.8): a weight matrix `[in][out]`
/// has rows of `out`, a bias is a single row of `out`.
pub fn tensor_cols(arch: &Arch) -> Vec<usize> {
    arch.layer_dims()
        .into_iter()
        .flat_map(|(_, o)| [o, o])
        .collect()
}

/// A per-tensor presence bitmap (§4.6, §4.7: bit `t mod 8`, LSB first, of byte `t / 8`) as one
/// flag per tensor; bits at or beyond `num_tensors` MUST be 0 and at least one bit MUST be set
/// (`none`: the expectation named in that error).
pub(crate) fn read_presence(
    bitmap: &[u8],
    num_tensors: usize,
    field: &'static str,
    none: &'static str,
) -> Result<Vec<bool>, FormatError> {
    let bit = |t: usize| bitmap.get(t / 8).is_some_and(|&b| b >> (t % 8) & 1 == 1);
    if (num_tensors..8 * bitmap.len()).any(bit) {
        return Err(FormatError::InvalidField {
            field,
            value: bitmap.len() as u64,
            expected: "no bit set at or beyond the number of tensors",
        });
    }
    let present: Vec<bool> = (0..num_tensors).map(bit).collect();
    if !present.iter().any(|&p| p) {
        return Err(FormatError::InvalidField {
            field,
            value: 0,
            expected: none,
        });
    }
    Ok(present)
}

/// The presence bitmap of `flags` (one per tensor, §4.6, §4.7).
pub(crate) fn write_presence(flags: impl Iterator<Item = bool>, num_tensors: usize) -> Vec<u8> {
    let mut out = vec![0u8; num_tensors.div_ceil(8)];
    for (t, f) in flags.enumerate() {
        if let (true, Some(b)) = (f, out.get_mut(t / 8)) {
            *b |= 1 << (t % 8);
        }
    }
    out
}

/// §4.6 Validates the presence bitmap (bits `>= T` zero, at least one bit set) and the mask
/// stream length; returns one flag per tensor (empty without the section).
fn parse_mask_presence(
    flags: u16,
    presence: &[u8],
    mask_stream: &[u8],
    num_tensors: usize,
) -> Result<Vec<bool>, FormatError> {
    if flags & FLAG_SPARSE == 0 {
        return Ok(Vec::new());
    }
    let present = read_presence(
        presence,
        num_tensors,
        "mask presence bitmap",
        "at least one masked tensor when flag bit 1 is set",
    )?;
    if !mask_stream.len().is_multiple_of(4) {
        return Err(FormatError::InvalidField {
            field: "mask stream length",
            value: mask_stream.len() as u64,
            expected: "a multiple of 4 (whole 32-bit words)",
        });
    }
    Ok(present)
}

/// Decodes the masks of a parsed file (§4.6, §5.8): empty without the section, else one
/// entry per tensor. Sizes are bounded by the validated parameter count.
fn decode_mask_section(
    p: &Parsed<'_>,
    base: Option<&[f32]>,
) -> Result<Vec<Option<Vec<bool>>>, FormatError> {
    if p.mask_present.is_empty() {
        return Ok(Vec::new());
    }
    let lens = p.arch.tensor_lens();
    if p.flags & FLAG_BASE_MASKS != 0 {
        // §4.6.2: the base's support, with the kept counts as a check.
        let id = p.base_id.unwrap_or(0); // flag bit 9 requires bit 0 (checked in `parse`)
        let Some(base) = base else {
            return Err(FormatError::BaseMasksNeedBase { id });
        };
        if base.len() != p.arch.num_params() {
            return Err(FormatError::InvalidField {
                field: "base weight count",
                value: base.len() as u64,
                expected: "the header's parameter count (§3.6)",
            });
        }
        let support = base_support(&p.arch, base);
        let mut counts = p.mask_counts.iter();
        let mut masks = Vec::with_capacity(lens.len());
        for (&m, keep) in p.mask_present.iter().zip(support) {
            let count = if m { counts.next().copied() } else { None };
            let Some(count) = count else {
                masks.push(None);
                continue;
            };
            if keep.iter().filter(|&&k| k).count() as u64 != u64::from(count) {
                return Err(FormatError::InvalidField {
                    field: "mask count",
                    value: count.into(),
                    expected: "the number of non-zero weights of the base's tensor (§4.6.2)",
                });
            }
            masks.push(Some(keep));
        }
        return Ok(masks);
    }
    if !p.mask_seeds.is_empty() {
        // §4.6.1: one threshold per masked tensor, each the canonical one of its mask.
        let mut seeds = p.mask_seeds.iter();
        let mut masks = Vec::with_capacity(lens.len());
        for (t, (&m, &n)) in p.mask_present.iter().zip(&lens).enumerate() {
            let tau = if m { seeds.next().copied() } else { None };
            let Some(tau) = tau else {
                masks.push(None);
                continue;
            };
            let keep = seeded_mask(t, n, tau);
            if seeded_threshold(t, &keep) != Some(tau) {
                return Err(FormatError::InvalidField {
                    field: "mask threshold",
                    value: tau.into(),
                    expected: "the canonical threshold of its mask (§4.6.1)",
                });
            }
            masks.push(Some(keep));
        }
        return Ok(masks);
    }
    let cols = tensor_cols(&p.arch);
    let shapes: Vec<entropy::MaskShape> = p
        .mask_present
        .iter()
        .zip(lens.iter().zip(&cols))
        .filter(|(&m, _)| m)
        .map(|(_, (&len, &cols))| entropy::MaskShape { len, cols })
        .collect();
    let mut decoded = entropy::decode_masks(p.mask_stream, &shapes)?.into_iter();
    Ok(p.mask_present
        .iter()
        .map(|&m| if m { decoded.next() } else { None })
        .collect())
}

/// §4.6.2 The support of a base: per tensor (all of them, in order), which of its weights
/// `base` (the parameter vector of `arch`) are non-zero (`+0.0` and `-0.0` are zero). `base`
/// shorter than the architecture gives shorter (possibly empty) tensors.
pub fn base_support(arch: &Arch, base: &[f32]) -> Vec<Vec<bool>> {
    let mut off = 0;
    arch.tensor_lens()
        .into_iter()
        .map(|n| {
            let w = base.get(off..off + n).unwrap_or(&[]);
            off += n;
            w.iter().map(|&v| v != 0.0).collect()
        })
        .collect()
}

/// §4.6.1 The seeded-mask hash of element `i` of tensor `t`: the high 32 bits of the
/// SplitMix64 output function applied to `(t << 32) | i` (all arithmetic modulo 2^64).
pub fn seed_hash(t: usize, i: usize) -> u32 {
    let mut z = ((t as u64) << 32 | i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 32) as u32
}

/// §4.6.1 The seeded mask of tensor `t` with `n` elements and threshold `tau`: element `i` is
/// kept iff `seed_hash(t, i) < tau`.
pub fn seeded_mask(t: usize, n: usize, tau: u32) -> Vec<bool> {
    (0..n).map(|i| seed_hash(t, i) < tau).collect()
}

/// The threshold that makes `keep` the seeded mask of tensor `t` (§4.6.1), or `None` when no
/// threshold does: the smallest hash of a pruned element, which every kept element's hash must
/// be below; with nothing pruned, one more than the largest kept hash (`None` if that is
/// `u32::MAX`).
pub fn seeded_threshold(t: usize, keep: &[bool]) -> Option<u32> {
    let (mut max_kept, mut min_pruned) = (None::<u32>, None::<u32>);
    for (i, &k) in keep.iter().enumerate() {
        let h = seed_hash(t, i);
        if k {
            max_kept = Some(max_kept.map_or(h, |m| m.max(h)));
        } else {
            min_pruned = Some(min_pruned.map_or(h, |m| m.min(h)));
        }
    }
    match (max_kept, min_pruned) {
        (Some(k), Some(p)) => (k < p).then_some(p),
        (None, Some(_)) => Some(0),
        (Some(k), None) => k.checked_add(1),
        (None, None) => Some(0),
    }
}

/// Puts the kept symbols back at the kept positions; pruned positions get 0 (§4.6).
fn scatter_kept(kept: &[i32], keep: &[bool]) -> Vec<i32> {
    let mut it = kept.iter();
    keep.iter()
        .map(|&k| {
            if k {
                it.next().copied().unwrap_or(0)
            } else {
                0
            }
        })
        .collect()
}

/// Checks `f.masks` against the tensors and returns the serialised sparsity section
/// (presence bitmap, stream length, stream), or `None` when no tensor is masked.
fn write_masks_prepare(f: &InrFile) -> Result<Option<Vec<u8>>, FormatError> {
    if f.masks.iter().all(Option::is_none) {
        return Ok(None);
    }
    let lens = f.arch.tensor_lens();
    if f.masks.len() != lens.len() {
        return Err(FormatError::TensorCount {
            expected: lens.len(),
            found: f.masks.len(),
        });
    }
    let cols = tensor_cols(&f.arch);
    let mut refs: Vec<(&[bool], usize)> = Vec::new();
    for (index, (m, t)) in f.masks.iter().zip(&f.tensors).enumerate() {
        let Some(keep) = m else { continue };
        if keep.len() != t.symbols.len() {
            return Err(FormatError::MaskLength {
                index,
                expected: t.symbols.len(),
                found: keep.len(),
            });
        }
        if let Some((i, &value)) = t
            .symbols
            .iter()
            .zip(keep)
            .enumerate()
            .find(|(_, (&v, &k))| !k && v != 0)
            .map(|(i, (v, _))| (i, v))
        {
            return Err(FormatError::MaskedNonZero {
                tensor: index,
                index: i,
                value,
            });
        }
        refs.push((keep.as_slice(), cols.get(index).copied().unwrap_or(1)));
    }
    let mut out = write_presence(f.masks.iter().map(Option::is_some), lens.len());
    if f.base_masks {
        // §4.6.2: the kept counts replace the mask stream; the masks are the base's support.
        if f.base_id.is_none() || f.seeded_masks {
            return Err(FormatError::InvalidField {
                field: "flags",
                value: u64::from(FLAG_BASE_MASKS),
                expected: "base masks only with a base reference and without seeded masks",
            });
        }
        for keep in f.masks.iter().flatten() {
            let kept = keep.iter().filter(|&&k| k).count() as u32; // <= max_params
            out.extend_from_slice(&kept.to_le_bytes());
        }
        return Ok(Some(out));
    }
    if f.seeded_masks {
        // §4.6.1: the thresholds replace the mask stream.
        for (tensor, m) in f.masks.iter().enumerate() {
            if let Some(keep) = m {
                let tau =
                    seeded_threshold(tensor, keep).ok_or(FormatError::MaskNotSeeded { tensor })?;
                out.extend_from_slice(&tau.to_le_bytes());
            }
        }
        return Ok(Some(out));
    }
    let stream = entropy::encode_masks(&refs)?;
    let len = u32::try_from(stream.len()).map_err(|_| FormatError::PayloadTooLarge {
        len: stream.len() as u64,
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&stream);
    Ok(Some(out))
}

/// Mask statistics of a file with base masks (§4.6.2), from its kept counts alone.
fn base_mask_info(p: &Parsed<'_>) -> SparsityInfo {
    let lens = p.arch.tensor_lens();
    let mut counts = p.mask_counts.iter();
    let (mut values, mut kept) = (0u64, 0u64);
    let tensor_density = p
        .mask_present
        .iter()
        .zip(&lens)
        .map(|(&m, &n)| match m.then(|| counts.next()).flatten() {
            Some(&k) => {
                values += n as u64;
                kept += u64::from(k);
                f64::from(k) / (n as f64).max(1.0)
            }
            None => 1.0,
        })
        .collect();
    let mask_bits = 32 * p.mask_counts.len() as u64;
    SparsityInfo {
        section_bytes: p.mask_present.len().div_ceil(8) as u64 + mask_bits / 8,
        mask_stream_bytes: 0,
        seeded: false,
        from_base: true,
        masked_tensors: p.mask_counts.len(),
        tensor_density,
        masked_values: values,
        kept_values: kept,
        density: kept as f64 / (values as f64).max(1.0),
        mask_bits_per_kept: mask_bits as f64 / (kept as f64).max(1.0),
        csr5_bits_per_kept: f64::NAN,
    }
}

/// Mask statistics of a parsed file for [`inspect`] (decodes the mask stream only).
fn sparsity_info(p: &Parsed<'_>) -> Result<Option<SparsityInfo>, FormatError> {
    if p.flags & FLAG_BASE_MASKS != 0 {
        return Ok(Some(base_mask_info(p)));
    }
    let masks = decode_mask_section(p, None)?;
    if masks.is_empty() {
        return Ok(None);
    }
    let lens = p.arch.tensor_lens();
    let (mut values, mut kept, mut csr_entries) = (0u64, 0u64, 0u64);
    let tensor_density = masks
        .iter()
        .zip(&lens)
        .map(|(m, &n)| match m {
            Some(keep) => {
                let k = keep.iter().filter(|&&k| k).count() as u64;
                values += n as u64;
                kept += k;
                csr_entries += entropy::csr_relative_index_entries(keep, 5).0;
                k as f64 / (n as f64).max(1.0)
            }
            None => 1.0,
        })
        .collect();
    let stream = p.mask_stream.len() as u64;
    let per_kept = |bits: u64| bits as f64 / (kept as f64).max(1.0);
    let seeded = !p.mask_seeds.is_empty();
    let bitmap = p.mask_present.len().div_ceil(8) as u64;
    let mask_bits = if seeded {
        32 * p.mask_seeds.len() as u64
    } else {
        8 * stream
    };
    Ok(Some(SparsityInfo {
        section_bytes: bitmap + if seeded { mask_bits / 8 } else { 4 + stream },
        mask_stream_bytes: stream,
        seeded,
        from_base: false,
        masked_tensors: masks.iter().filter(|m| m.is_some()).count(),
        tensor_density,
        masked_values: values,
        kept_values: kept,
        density: kept as f64 / (values as f64).max(1.0),
        mask_bits_per_kept: per_kept(mask_bits),
        csr5_bits_per_kept: per_kept(5 * csr_entries),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch() -> Arch {
        Arch {
            coord_dims: 2,
            out_channels: 3,
            width: 16,
            depth: 3,
            pe_freqs: 4,
            pe_base_milli: 2000,
            w0_first: 30,
            w0_hidden: 30,
        }
    }

    #[test]
    fn arch_arithmetic() {
        let a = arch();
        assert_eq!(a.in_features(), 2 * 9);
        assert_eq!(a.layer_dims(), vec![(18, 16), (16, 16), (16, 16), (16, 3)]);
        assert_eq!(a.tensor_lens(), vec![18 * 16, 16, 256, 16, 256, 16, 48, 3]);
        assert_eq!(a.num_params(), 288 + 16 + 2 * 272 + 51);
        assert_eq!(a.num_params() as u64, a.num_params_u64());
        assert_eq!(a.num_tensors(), a.tensor_lens().len());
        let d1 = Arch { depth: 1, ..a };
        assert_eq!(d1.layer_dims(), vec![(18, 16), (16, 3)]);
        a.validate(&Limits::default()).unwrap();
    }

    #[test]
    fn arch_validation_rejects_each_bad_field() {
        let l = Limits::default();
        let a = arch();
        for bad in [
            Arch { coord_dims: 1, ..a },
            Arch {
                out_channels: 2,
                ..a
            },
            Arch { width: 0, ..a },
            Arch { depth: 0, ..a },
            Arch { depth: 65, ..a },
            Arch { pe_freqs: 65, ..a },
            Arch {
                pe_base_milli: 0,
                ..a
            },
            Arch { w0_first: 0, ..a },
            Arch { w0_hidden: 0, ..a },
        ] {
            assert!(
                matches!(bad.validate(&l), Err(FormatError::InvalidField { .. })),
                "{bad:?}"
            );
        }
        let huge = Arch {
            width: 65535,
            depth: 64,
            ..a
        };
        assert!(matches!(
            huge.validate(&l),
            Err(FormatError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn step_conversions() {
        for (m, e) in [(1u16, 0u8), (65535, 0), (40000, 20), (1, 64), (32768, 64)] {
            let s = Step {
                mantissa: m,
                exponent: e,
            };
            assert_eq!(f64::from(s.to_f32()), f64::from(m) * (-f64::from(e)).exp2());
        }
        for x in [1e-3f32, 0.0123, 0.5, 1.0, 3.7, 1000.0, 1e-14] {
            let s = Step::from_f32(x);
            assert!((32768..=65535).contains(&s.mantissa), "{x} {s:?}");
            let rel = ((s.to_f32() - x) / x).abs();
            assert!(rel <= 1.0 / 65536.0, "{x} -> {s:?} rel {rel}");
        }
        // Exactly representable values come back exactly.
        assert_eq!(Step::from_f32(0.25).to_f32(), 0.25);
        assert_eq!(
            Step::from_f32(0.25),
            Step {
                mantissa: 32768,
                exponent: 17
            }
        );
        assert_eq!(
            Step::from_f32(1e6),
            Step {
                mantissa: 65535,
                exponent: 0
            }
        );
        assert_eq!(
            Step::from_f32(f32::INFINITY),
            Step {
                mantissa: 65535,
                exponent: 0
            }
        );
        for x in [0.0, -1.0, f32::NAN] {
            assert_eq!(
                Step::from_f32(x),
                Step {
                    mantissa: 1,
                    exponent: 64
                }
            );
        }
        // Tiny values keep the largest exponent with a small mantissa.
        let tiny = Step::from_f32(1e-19);
        assert_eq!(tiny.exponent, 64);
        assert!(tiny.mantissa >= 1 && tiny.mantissa < 32768);
        // Upper boundary: 65535.6 * 2^-e rounds to 65536 only at e = 0 (clamped).
        assert_eq!(Step::from_f32(65535.6).mantissa, 65535);
    }

    #[test]
    fn dequantize_is_symbol_times_step() {
        let t = QTensor {
            step: Step {
                mantissa: 3,
                exponent: 2,
            },
            bits: 4,
            symbols: vec![-2, 0, 5],
        };
        assert_eq!(t.dequantize(), vec![-1.5, 0.0, 3.75]);
    }

    #[test]
    fn bits_helpers() {
        assert_eq!(max_abs_for_bits(2), 1);
        assert_eq!(max_abs_for_bits(6), 31);
        assert_eq!(max_abs_for_bits(14), 8191);
        assert_eq!(max_abs_for_bits(16), 32767);
        assert_eq!(group_bits(&[14, 6, 14, 6, 6, 14, 8, 14]), vec![6, 8, 14]);
        assert_eq!(group_bits(&[]), Vec::<u8>::new());
        let (idx, lens) = group_members(&[14, 6, 14, 6], &[10, 20, 30, 40], 14);
        assert_eq!((idx, lens), (vec![0, 2], vec![10, 30]));
        let (idx, lens) = group_members(&[14, 6, 14, 6], &[10, 20, 30, 40], 6);
        assert_eq!((idx, lens), (vec![1, 3], vec![20, 40]));
        assert!(validate_header_bits(14, &[6, 14, 8]).is_ok());
        for b in [6u8, 8, 13, 16] {
            assert!(matches!(
                validate_header_bits(b, &[6, 14, 8]),
                Err(FormatError::InvalidField { field: "bits", .. })
            ));
        }
    }

    #[test]
    fn write_read_mixed_bits_in_module() {
        let a = arch();
        let lens = a.tensor_lens();
        let tensors: Vec<QTensor> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let bits = if i < 2 || i % 2 == 1 { 14 } else { 6 };
                let m = max_abs_for_bits(bits) as i32;
                QTensor {
                    step: Step::from_f32(0.01),
                    bits,
                    symbols: (0..n as i32)
                        .map(|j| (j * 7919) % (2 * m + 1) - m)
                        .collect(),
                }
            })
            .collect();
        let f = InrFile {
            width: 10,
            height: 7,
            arch: a,
            bits: 14,
            tensors,
            base_id: None,
            masks: Vec::new(),
            seeded_masks: false,
            base_masks: false,
            codebooks: Vec::new(),
        };
        let bytes = write_file(&f).unwrap();
        assert_eq!(read_file(&bytes, &Limits::default()).unwrap(), f);
        let info = inspect(&bytes).unwrap();
        assert_eq!(
            info.tensor_bits,
            f.tensors.iter().map(|t| t.bits).collect::<Vec<_>>()
        );
        assert_eq!(info.groups.len(), 2);
        assert_eq!((info.groups[0].bits, info.groups[0].tensors), (6, 3));
        assert_eq!((info.groups[1].bits, info.groups[1].tensors), (14, 5));
    }
}
