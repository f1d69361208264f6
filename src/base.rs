//! Base files (`.inrb`, `codec-spec.md` §10): a meta-learned initialisation (architecture plus
//! f32 weights) that encoder and decoder share. An `.inr` file coded from a base stores only
//! the quantized residual `W - W_base` and names the base by its id (§4.5).
//!
//! Like [`format`](crate::format), this module never touches the model or candle: parsing a
//! base is plain byte work with limits checked before any allocation.

use crate::format::{Arch, FormatError, Limits, ARCH_BYTES, MODALITY_AUDIO, MODALITY_IMAGE};
use sha2::{Digest, Sha256};

/// §10.1 Magic of a base file: `0x89 'I' 'N' 'B'`.
pub const BASE_MAGIC: [u8; 4] = [0x89, b'I', b'N', b'B'];
/// §10.1 The base-file version of weight bases (read and written unchanged).
pub const BASE_VERSION: u8 = 1;
/// §10.3 The base-file version of modulation bases (a version-1 layout plus the 4-byte
/// modulation block after the architecture).
pub const BASE_VERSION_MOD: u8 = 2;
/// §10.4 The base-file version of audio weight bases (a version-1 layout with modality 2 plus
/// the 4-byte window length after the architecture).
pub const BASE_VERSION_AUDIO: u8 = 3;
/// §10.5 The base-file version of grid bases (a version-1 layout whose architecture is a
/// grid synthesis network, §13.1).
pub const BASE_VERSION_GRID: u8 = 4;
/// §10.4 Size of the audio block of a version-3 base (window length, `u32`).
pub const BASE_AUDIO_BLOCK_BYTES: usize = 4;
/// §10.1 Fixed part before the description (version 1): magic, version, modality, flags, arch,
/// n_params, description length.
pub const BASE_HEADER_BYTES: usize = 4 + 1 + 1 + 2 + ARCH_BYTES + 4 + 2;
/// §10.3 Size of the modulation block of a version-2 base (kind, latent_dim, cell, reserved).
pub const BASE_MOD_BLOCK_BYTES: usize = 4;
/// §10.3 Fixed part before the description of a version-2 base.
pub const BASE_HEADER_BYTES_V2: usize = BASE_HEADER_BYTES + BASE_MOD_BLOCK_BYTES;
/// §10.3 The `kind` byte of a modulation base.
pub const BASE_KIND_MODULATION: u8 = 1;
/// §10.1 Longest description in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;

/// Errors specific to base files and base lookup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaseError {
    #[error(
        "not an .inrb base file: expected magic bytes 89 49 4E 42 (\"\\x89INB\"), found {found:02X?}"
    )]
    BadMagic { found: [u8; 4] },
    #[error(
        "unsupported .inrb version {found} (this build reads versions {BASE_VERSION}, \
         {BASE_VERSION_MOD}, {BASE_VERSION_AUDIO} and {BASE_VERSION_GRID})"
    )]
    UnsupportedVersion { found: u8 },
    #[error("base file: {0}")]
    Format(#[from] FormatError),
    #[error("base file weight {index} is not finite (bits 0x{bits:08X})")]
    NonFinite { index: usize, bits: u32 },
    #[error("base file description is not UTF-8")]
    Description,
    #[error(
        "this file was coded from base {id:016x}, which this decoder does not have \
         (embedded: {embedded}); pass it with --base FILE.inrb"
    )]
    Missing { id: u64, embedded: String },
    #[error(
        "base {id:016x} has architecture {base:?}, but the file needs {file:?} \
         (the base does not match this file)"
    )]
    ArchMismatch { id: u64, base: Arch, file: Arch },
    #[error(
        "base {id:016x} is a {found} base, but this file needs a {expected} base \
         (the base does not match this file)"
    )]
    WrongKind {
        id: u64,
        found: &'static str,
        expected: &'static str,
    },
}

/// §10.3 What a modulation base adds to the network: the latent layout its files use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ModSpec {
    /// Latent channels per grid node, 1..=255.
    pub latent_dim: u8,
    /// Latent grid spacing in pixels, 2..=255.
    pub cell: u8,
}

impl ModSpec {
    /// Number of values of the latent-to-shift map: `latent_dim * depth * width` (§10.3).
    pub fn map_len(&self, arch: &Arch) -> usize {
        usize::from(self.latent_dim) * usize::from(arch.depth) * usize::from(arch.width)
    }

    fn validate(&self) -> Result<(), FormatError> {
        if self.latent_dim == 0 {
            return Err(FormatError::InvalidField {
                field: "base latent_dim",
                value: 0,
                expected: "1..=255",
            });
        }
        if self.cell < crate::format::MIN_CELL {
            return Err(FormatError::InvalidField {
                field: "base cell",
                value: self.cell.into(),
                expected: "2..=255 pixels",
            });
        }
        Ok(())
    }
}

/// A meta-learned initialisation: the network every encode from it starts at (a weight base,
/// version 1), or the shared network of modulation-mode files (a modulation base, version 2).
#[derive(Debug, Clone, PartialEq)]
pub struct Base {
    pub arch: Arch,
    /// Weights in file tensor order (`[W0, b0, W1, b1, ...]`, §6.1), `arch.num_params()` values;
    /// for a modulation base followed by the latent-to-shift map `[latent_dim][depth * width]`
    /// row-major (§10.3), `arch.num_params() + spec.map_len(&arch)` values in all.
    pub params: Vec<f32>,
    /// `None` for a weight base (version 1), the latent layout for a modulation base
    /// (version 2).
    pub modulation: Option<ModSpec>,
    /// `None` for an image base, the window length (frames) for an audio weight base
    /// (version 3, §10.4): the window the base was trained for; encoders use it only for that
    /// window length.
    pub audio_window: Option<u32>,
    /// A grid base (version 4, §10.5): the synthesis network grid-mode fits start from
    /// (`arch.coord_dims` = latent levels). Encoder-only: grid files never name a base.
    pub grid: bool,
    /// With `grid`: an audio grid base (modality 2, §10.5), the start of the segment networks
    /// of `inr encode clip.wav --mode grid` (`out_channels` = the clip's channels, 1..=16).
    pub grid_audio: bool,
    /// Free text: how the base was trained (command, data, steps).
    pub description: String,
    id: u64,
}

/// What [`Base::build`] makes.
#[derive(Clone, Copy)]
enum Kind {
    Weights,
    AudioWeights(u32),
    Modulation(ModSpec),
    Grid { audio: bool },
}

impl Base {
    /// Builds a base and computes its id from its serialisation.
    ///
    /// # Errors
    /// When the arch is invalid, the weight count does not match it, a weight is not finite or
    /// the description is too long.
    pub fn new(arch: Arch, params: Vec<f32>, description: String) -> Result<Base, BaseError> {
        Base::build(arch, params, description, Kind::Weights)
    }

    /// Builds an audio weight base (written as a version-3 base file, §10.4) for windows of
    /// `window_len` frames: `arch` must have `coord_dims` 1.
    ///
    /// # Errors
    /// As [`Base::new`], and for `coord_dims != 1` or a window length outside 1..=2^20.
    pub fn new_audio(
        arch: Arch,
        window_len: u32,
        params: Vec<f32>,
        description: String,
    ) -> Result<Base, BaseError> {
        Base::build(arch, params, description, Kind::AudioWeights(window_len))
    }

    /// Builds a modulation base (written as a version-2 base file, §10.3): `params` holds the
    /// `arch.num_params()` network weights in tensor order, then the latent-to-shift map
    /// `[latent_dim][depth * width]` row-major (row i = latent i; columns: sine layer 0's
    /// `width` outputs, then layer 1's, ...).
    ///
    /// # Errors
    /// As [`Base::new`], and for `latent_dim == 0`, `cell < 2` or a total weight count above
    /// the default parameter limit.
    pub fn new_modulation(
        arch: Arch,
        spec: ModSpec,
        params: Vec<f32>,
        description: String,
    ) -> Result<Base, BaseError> {
        Base::build(arch, params, description, Kind::Modulation(spec))
    }

    /// Builds a grid base (written as a version-4 base file, §10.5): the start of grid-mode
    /// synthesis networks; `arch` is checked as a grid file's (§13.1).
    ///
    /// # Errors
    /// As [`Base::new`], for a grid architecture.
    pub fn new_grid(arch: Arch, params: Vec<f32>, description: String) -> Result<Base, BaseError> {
        Base::build(arch, params, description, Kind::Grid { audio: false })
    }

    /// Builds an audio grid base (a version-4 base file of modality 2, §10.5): the start of
    /// the synthesis networks of audio grid segments (§14); `arch` is checked as an audio grid
    /// file's (§14.1).
    ///
    /// # Errors
    /// As [`Base::new`], for an audio grid architecture.
    pub fn new_audio_grid(
        arch: Arch,
        params: Vec<f32>,
        description: String,
    ) -> Result<Base, BaseError> {
        Base::build(arch, params, description, Kind::Grid { audio: true })
    }

    /// The one constructor: every field from `kind`, then the id from the serialisation (which
    /// validates the base).
    fn build(
        arch: Arch,
        params: Vec<f32>,
        description: String,
        kind: Kind,
    ) -> Result<Base, BaseError> {
        let mut b = Base {
            arch,
            params,
            modulation: match kind {
                Kind::Modulation(spec) => Some(spec),
                _ => None,
            },
            audio_window: match kind {
                Kind::AudioWeights(window_len) => Some(window_len),
                _ => None,
            },
            grid: matches!(kind, Kind::Grid { .. }),
            grid_audio: matches!(kind, Kind::Grid { audio: true }),
            description,
            id: 0,
        };
        let bytes = b.to_bytes()?;
        b.id = id_of(&bytes);
        Ok(b)
    }

    /// What the base is for, as error messages and `inr info` name it: "weight", "grid",
    /// "modulation", "audio weight" or "audio modulation".
    pub fn kind(&self) -> &'static str {
        match (self.grid, self.modulation.is_some(), self.is_audio()) {
            (true, _, true) => "audio grid",
            (true, _, _) => "grid",
            (_, true, true) => "audio modulation",
            (_, true, false) => "modulation",
            (_, false, true) => "audio weight",
            _ => "weight",
        }
    }

    /// [`Base::kind`] with its article, e.g. `an audio weight`.
    pub fn a_kind(&self) -> String {
        let k = self.kind();
        let a = if k.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{a} {k}")
    }

    /// The number of weights the base file must hold: the network's, plus the map's for a
    /// modulation base (§10.1, §10.3).
    pub fn expected_params(&self) -> usize {
        self.arch.num_params() + self.modulation.map_or(0, |m| m.map_len(&self.arch))
    }

    /// True for a base of audio networks (one coordinate): an audio weight base (§10.4) or an
    /// audio modulation base (§10.3, modality 2).
    pub fn is_audio(&self) -> bool {
        self.audio_window.is_some()
            || (self.modulation.is_some() && self.arch.coord_dims == 1)
            || (self.grid && self.grid_audio)
    }

    /// Content id: the first 8 bytes (little endian) of the SHA-256 of the base file (§10.2).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Serialises the base (§10.1).
    ///
    /// # Errors
    /// As [`Base::new`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, BaseError> {
        let limits = Limits::default();
        if self.grid {
            if self.modulation.is_some() || self.audio_window.is_some() {
                return Err(FormatError::InvalidField {
                    field: "base kind",
                    value: 4,
                    expected: "a grid base is neither a modulation nor an audio base",
                }
                .into());
            }
            if self.grid_audio {
                crate::format::validate_audio_grid_arch(&self.arch, &limits)?;
            } else {
                crate::format::validate_grid_arch(&self.arch, &limits)?;
            }
        } else {
            validate_arch(&self.arch, self.is_audio(), self.audio_window, &limits)?;
        }
        if let Some(m) = &self.modulation {
            m.validate()?;
        }
        if self.audio_window.is_some() && self.modulation.is_some() {
            return Err(FormatError::InvalidField {
                field: "base kind",
                value: 2,
                expected: "an audio base cannot be a modulation base",
            }
            .into());
        }
        let n = self.expected_params();
        if n as u64 > limits.max_params {
            return Err(FormatError::LimitExceeded {
                what: "base weight count",
                value: n as u64,
                limit: limits.max_params,
            }
            .into());
        }
        if self.params.len() != n {
            return Err(FormatError::TensorLength {
                index: 0,
                expected: n,
                found: self.params.len(),
            }
            .into());
        }
        if let Some((index, v)) = self.params.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(BaseError::NonFinite {
                index,
                bits: v.to_bits(),
            });
        }
        let desc = self.description.as_bytes();
        if desc.len() > MAX_DESCRIPTION_BYTES {
            return Err(FormatError::InvalidField {
                field: "base description length",
                value: desc.len() as u64,
                expected: "0..=4096",
            }
            .into());
        }
        let mut out = Vec::with_capacity(BASE_HEADER_BYTES_V2 + desc.len() + 4 * n + 4);
        out.extend_from_slice(&BASE_MAGIC);
        out.push(if self.grid {
            BASE_VERSION_GRID
        } else if self.modulation.is_some() {
            BASE_VERSION_MOD
        } else if self.audio_window.is_some() {
            BASE_VERSION_AUDIO
        } else {
            BASE_VERSION
        });
        out.push(if self.is_audio() {
            MODALITY_AUDIO
        } else {
            MODALITY_IMAGE
        });
        out.extend_from_slice(&0u16.to_le_bytes());
        self.arch.write(&mut out);
        if let Some(m) = &self.modulation {
            out.extend_from_slice(&[BASE_KIND_MODULATION, m.latent_dim, m.cell, 0]);
        }
        if let Some(w) = self.audio_window {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u16).to_le_bytes());
        out.extend_from_slice(desc);
        for v in &self.params {
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Parses and validates a base file (§10.1). Never panics; sizes are checked against
    /// `limits` and the bytes present before anything is allocated.
    ///
    /// # Errors
    /// A [`BaseError`] naming what is wrong.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Base, BaseError> {
        let total = bytes.len();
        let trunc = |what, needed: usize, at: usize| {
            BaseError::Format(FormatError::Truncated {
                what,
                needed: needed as u64,
                available: total.saturating_sub(at) as u64,
            })
        };
        if total as u64 > limits.max_file_bytes {
            return Err(FormatError::LimitExceeded {
                what: "base file size",
                value: total as u64,
                limit: limits.max_file_bytes,
            }
            .into());
        }
        let magic: [u8; 4] = bytes
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| trunc("base magic", 4, 0))?;
        if magic != BASE_MAGIC {
            return Err(BaseError::BadMagic { found: magic });
        }
        let version = *bytes.get(4).ok_or_else(|| trunc("base version", 1, 4))?;
        let header_bytes = match version {
            BASE_VERSION | BASE_VERSION_GRID => BASE_HEADER_BYTES,
            BASE_VERSION_MOD => BASE_HEADER_BYTES_V2,
            BASE_VERSION_AUDIO => BASE_HEADER_BYTES + BASE_AUDIO_BLOCK_BYTES,
            _ => return Err(BaseError::UnsupportedVersion { found: version }),
        };
        let head = bytes
            .get(..header_bytes)
            .ok_or_else(|| trunc("base header", header_bytes, 0))?;
        let modality = head[5];
        let flags = u16::from_le_bytes([head[6], head[7]]);
        let mut arch_bytes = [0u8; ARCH_BYTES];
        arch_bytes.copy_from_slice(&head[8..8 + ARCH_BYTES]);
        let arch = Arch::read(&arch_bytes);
        let mut o = 8 + ARCH_BYTES;
        // §10.3 The modulation block of a version-2 base: kind, latent_dim, cell, reserved.
        let mod_block = if version == BASE_VERSION_MOD {
            let block = [head[o], head[o + 1], head[o + 2], head[o + 3]];
            o += BASE_MOD_BLOCK_BYTES;
            Some(block)
        } else {
            None
        };
        // §10.4 The audio block of a version-3 base: the window length.
        let audio_window = if version == BASE_VERSION_AUDIO {
            let w = u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
            o += BASE_AUDIO_BLOCK_BYTES;
            Some(w)
        } else {
            None
        };
        let n = u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]) as usize;
        let desc_len = u16::from_le_bytes([head[o + 4], head[o + 5]]) as usize;
        let modality_ok = match version {
            BASE_VERSION => modality == MODALITY_IMAGE,
            BASE_VERSION_MOD | BASE_VERSION_GRID => {
                modality == MODALITY_IMAGE || modality == MODALITY_AUDIO
            }
            _ => modality == MODALITY_AUDIO,
        };
        if !modality_ok {
            return Err(FormatError::InvalidField {
                field: "base modality",
                value: modality.into(),
                expected: "1 (image) in version 1, 1 or 2 (audio) in versions 2 and 4, 2 \
                           (audio) in version 3",
            }
            .into());
        }
        if flags != 0 {
            return Err(FormatError::InvalidField {
                field: "base flags",
                value: flags.into(),
                expected: "0",
            }
            .into());
        }
        let grid = version == BASE_VERSION_GRID;
        let grid_audio = grid && modality == MODALITY_AUDIO;
        if grid_audio {
            crate::format::validate_audio_grid_arch(&arch, limits)?;
        } else if grid {
            crate::format::validate_grid_arch(&arch, limits)?;
        } else {
            validate_arch(&arch, modality == MODALITY_AUDIO, audio_window, limits)?;
        }
        let modulation = match mod_block {
            None => None,
            Some([kind, latent_dim, cell, reserved]) => {
                if kind != BASE_KIND_MODULATION {
                    return Err(FormatError::InvalidField {
                        field: "base kind",
                        value: kind.into(),
                        expected: "1 (modulation base) in a version-2 base file",
                    }
                    .into());
                }
                if reserved != 0 {
                    return Err(FormatError::InvalidField {
                        field: "base reserved byte",
                        value: reserved.into(),
                        expected: "0",
                    }
                    .into());
                }
                let spec = ModSpec { latent_dim, cell };
                spec.validate()?;
                Some(spec)
            }
        };
        // <= 2^41 + 2^30: no overflow in u64.
        let expected = arch.num_params() as u64 + modulation.map_or(0, |m| m.map_len(&arch) as u64);
        if expected > limits.max_params {
            return Err(FormatError::LimitExceeded {
                what: "base weight count",
                value: expected,
                limit: limits.max_params,
            }
            .into());
        }
        if n as u64 != expected {
            return Err(FormatError::InvalidField {
                field: "base parameter count",
                value: n as u64,
                expected: if modulation.is_some() {
                    "the architecture's parameter count + latent_dim x depth x width"
                } else {
                    "the architecture's parameter count"
                },
            }
            .into());
        }
        if desc_len > MAX_DESCRIPTION_BYTES {
            return Err(FormatError::InvalidField {
                field: "base description length",
                value: desc_len as u64,
                expected: "0..=4096",
            }
            .into());
        }
        // n <= limits.max_params (validated), so this cannot overflow.
        let need = header_bytes + desc_len + 4 * n + 4;
        if total < need {
            return Err(trunc("base file", need, 0));
        }
        if total > need {
            return Err(FormatError::TrailingBytes {
                count: (total - need) as u64,
            }
            .into());
        }
        let body = &bytes[..need - 4];
        let stored = u32::from_le_bytes([
            bytes[need - 4],
            bytes[need - 3],
            bytes[need - 2],
            bytes[need - 1],
        ]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(FormatError::CrcMismatch { stored, computed }.into());
        }
        let desc = &body[header_bytes..header_bytes + desc_len];
        let description = std::str::from_utf8(desc)
            .map_err(|_| BaseError::Description)?
            .to_string();
        let mut params = Vec::with_capacity(n);
        for (index, c) in body[header_bytes + desc_len..].chunks_exact(4).enumerate() {
            let bits = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let v = f32::from_bits(bits);
            if !v.is_finite() {
                return Err(BaseError::NonFinite { index, bits });
            }
            params.push(v);
        }
        Ok(Base {
            arch,
            params,
            modulation,
            audio_window,
            grid,
            grid_audio,
            description,
            id: id_of(bytes),
        })
    }
}

/// The architecture checks of a base (§10.1): an image base's as §3.6; an audio base (an
/// audio weight base, §10.4, or an audio modulation base, §10.3) has `coord_dims` 1 and 1..=16
/// outputs, and an audio weight base a window length in 1..=2^20.
fn validate_arch(
    arch: &Arch,
    audio: bool,
    audio_window: Option<u32>,
    limits: &Limits,
) -> Result<(), FormatError> {
    if !audio {
        return arch.validate(limits);
    }
    if arch.coord_dims != 1 {
        return Err(FormatError::InvalidField {
            field: "coord_dims",
            value: arch.coord_dims.into(),
            expected: "1 (audio base)",
        });
    }
    if arch.out_channels == 0 || arch.out_channels > crate::format::MAX_AUDIO_CHANNELS {
        return Err(FormatError::InvalidField {
            field: "out_channels",
            value: arch.out_channels.into(),
            expected: "1..=16 (audio base)",
        });
    }
    if let Some(window) = audio_window.filter(|&w| w == 0 || w > crate::format::MAX_WINDOW_LEN) {
        return Err(FormatError::InvalidField {
            field: "base window length",
            value: window.into(),
            expected: "1..=1048576 frames",
        });
    }
    arch.validate_net(limits)
}

/// §10.2 Base id: the first 8 bytes of SHA-256 over the whole base file, little endian.
pub fn id_of(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first)
}

/// The bases built into this binary (image bases trained on kodim01-12, the audio base on the
/// three shared clips, with `inr meta-train`; see `bases/README.md`), parsed once.
pub fn embedded() -> &'static [Base] {
    static CELL: std::sync::OnceLock<Vec<Base>> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        EMBEDDED
            .iter()
            .filter_map(|(_, b)| Base::from_bytes(b, &Limits::default()).ok())
            .collect()
    })
}

/// Names and bytes of the embedded base files (`bases/`, see `bases/README.md` for how each
/// was trained). A preset uses the base whose architecture matches its network.
pub const EMBEDDED: &[(&str, &[u8])] = &[
    ("image-small", include_bytes!("../bases/image-small.inrb")),
    ("image-medium", include_bytes!("../bases/image-medium.inrb")),
    ("image-mod", include_bytes!("../bases/image-mod.inrb")),
    ("audio-medium", include_bytes!("../bases/audio-medium.inrb")),
    ("image-grid", include_bytes!("../bases/image-grid.inrb")),
    ("audio-grid", include_bytes!("../bases/audio-grid.inrb")),
    (
        "image-grid-shared",
        include_bytes!("../bases/image-grid-shared.inrb"),
    ),
    (
        "image-grid-shared-low",
        include_bytes!("../bases/image-grid-shared-low.inrb"),
    ),
];

/// Finds the base with `id` among `extra` (user-supplied, searched first) and the embedded
/// ones.
///
/// # Errors
/// [`BaseError::Missing`] naming the id and the bases that are available.
pub fn find(id: u64, extra: &[Base]) -> Result<&Base, BaseError> {
    if let Some(b) = extra.iter().find(|b| b.id == id) {
        return Ok(b);
    }
    let emb = embedded();
    if let Some(b) = emb.iter().find(|b| b.id == id) {
        return Ok(b);
    }
    let list: Vec<String> = emb.iter().map(|b| format!("{:016x}", b.id)).collect();
    Err(BaseError::Missing {
        id,
        embedded: if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        },
    })
}

/// The embedded weight base for an architecture, if one ships with this binary (never a
/// modulation base).
pub fn embedded_for(arch: &Arch) -> Option<&'static Base> {
    embedded()
        .iter()
        .find(|b| b.arch == *arch && b.kind() == "weight")
}

/// The embedded grid base (§10.5) fits start from for a synthesis architecture, if one ships
/// with this binary (never a shared synthesis, [`embedded_grid_shared`]).
pub fn embedded_grid_for(arch: &Arch) -> Option<&'static Base> {
    embedded()
        .iter()
        .find(|b| b.grid && !b.grid_audio && b.arch == *arch && !is_embedded_grid_shared(b.id))
}

/// Names in [`EMBEDDED`] of the shared synthesis networks of `--mode grid-shared` files
/// (§13.8), each with the smallest rate weight λ it is used for: each was trained at one λ
/// and codes best near it (`bases/README.md`).
pub const EMBEDDED_GRID_SHARED: &[(&str, f32)] =
    &[("image-grid-shared-low", 0.01), ("image-grid-shared", 0.0)];

/// The embedded shared synthesis network (an image grid base used as the fixed synthesis of
/// §13.8 files) for encodes at rate weight `lambda`, if one ships with this binary: the first
/// of [`EMBEDDED_GRID_SHARED`] whose smallest λ is at most `lambda`.
pub fn embedded_grid_shared(lambda: f32) -> Option<&'static Base> {
    let (name, _) = EMBEDDED_GRID_SHARED
        .iter()
        .find(|(_, min)| lambda >= *min)
        .or(EMBEDDED_GRID_SHARED.last())?;
    embedded_named(name)
}

/// Whether `id` is one of the embedded shared synthesis networks.
pub fn is_embedded_grid_shared(id: u64) -> bool {
    EMBEDDED_GRID_SHARED
        .iter()
        .filter_map(|(n, _)| embedded_named(n))
        .any(|b| b.id == id)
}

/// The embedded base of that name in [`EMBEDDED`].
fn embedded_named(name: &str) -> Option<&'static Base> {
    let bytes = EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)?;
    let id = id_of(bytes);
    embedded().iter().find(|b| b.id == id)
}

/// The embedded audio grid base (§10.5, modality 2) for a segment synthesis architecture, if
/// one ships with this binary.
pub fn embedded_audio_grid_for(arch: &Arch) -> Option<&'static Base> {
    embedded().iter().find(|b| b.grid_audio && b.arch == *arch)
}

/// The embedded audio base (§10.4) for an architecture and window length, if one ships with
/// this binary.
pub fn embedded_audio_for(arch: &Arch, window_len: u32) -> Option<&'static Base> {
    embedded()
        .iter()
        .find(|b| b.arch == *arch && b.audio_window == Some(window_len))
}

/// The first embedded image modulation base (§10.3), if one ships with this binary.
pub fn embedded_modulation() -> Option<&'static Base> {
    embedded()
        .iter()
        .find(|b| b.modulation.is_some() && !b.is_audio())
}

/// The first embedded audio modulation base (§10.3, modality 2) for clips of `channels`
/// channels, if one ships with this binary.
pub fn embedded_audio_modulation(channels: u8) -> Option<&'static Base> {
    embedded()
        .iter()
        .find(|b| b.modulation.is_some() && b.is_audio() && b.arch.out_channels == channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch() -> Arch {
        Arch {
            coord_dims: 2,
            out_channels: 3,
            width: 4,
            depth: 2,
            pe_freqs: 0,
            pe_base_milli: 2000,
            w0_first: 30,
            w0_hidden: 30,
        }
    }

    fn base() -> Base {
        let n = arch().num_params();
        Base::new(
            arch(),
            (0..n).map(|i| i as f32 * 0.01 - 0.2).collect(),
            "test".into(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_id() {
        let b = base();
        let bytes = b.to_bytes().unwrap();
        let c = Base::from_bytes(&bytes, &Limits::default()).unwrap();
        assert_eq!(b, c);
        assert_eq!(c.id(), id_of(&bytes));
        // Any change to the weights changes the id.
        let mut p = b.params.clone();
        p[3] += 1e-6;
        let d = Base::new(arch(), p, "test".into()).unwrap();
        assert_ne!(d.id(), b.id());
    }

    #[test]
    fn every_truncation_and_byte_flip_is_an_error() {
        let bytes = base().to_bytes().unwrap();
        for n in 0..bytes.len() {
            assert!(
                Base::from_bytes(&bytes[..n], &Limits::default()).is_err(),
                "{n}"
            );
        }
        for i in 0..bytes.len() {
            for x in [1u8, 0x80, 0xFF] {
                let mut c = bytes.clone();
                c[i] ^= x;
                assert!(Base::from_bytes(&c, &Limits::default()).is_err(), "{i} {x}");
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            Base::from_bytes(&long, &Limits::default()),
            Err(BaseError::Format(FormatError::TrailingBytes { .. }))
        ));
    }

    #[test]
    fn wrong_version_and_non_finite_are_named() {
        let mut bytes = base().to_bytes().unwrap();
        bytes[4] = 9;
        assert!(matches!(
            Base::from_bytes(&bytes, &Limits::default()),
            Err(BaseError::UnsupportedVersion { found: 9 })
        ));
        let mut p = base().params;
        p[0] = f32::NAN;
        assert!(matches!(
            Base::new(arch(), p, String::new()),
            Err(BaseError::NonFinite { index: 0, .. })
        ));
    }

    /// A grid synthesis network: 5 levels in, 3 colours out.
    fn grid_arch() -> Arch {
        Arch {
            coord_dims: 5,
            out_channels: 3,
            width: 8,
            depth: 2,
            pe_freqs: 0,
            pe_base_milli: 1000,
            w0_first: 2,
            w0_hidden: 2,
        }
    }

    /// Rewrites byte `i` of a base file and its CRC, so that only the field check can fail.
    fn patched(bytes: &[u8], i: usize, v: u8) -> Vec<u8> {
        let mut c = bytes.to_vec();
        c[i] = v;
        let n = c.len() - 4;
        let crc = crc32fast::hash(&c[..n]);
        c[n..].copy_from_slice(&crc.to_le_bytes());
        c
    }

    #[test]
    fn grid_bases_round_trip_as_version_4_and_keep_their_kind() {
        let n = grid_arch().num_params();
        let p: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - 0.2).collect();
        let g = Base::new_grid(grid_arch(), p.clone(), "grid".into()).unwrap();
        let bytes = g.to_bytes().unwrap();
        assert_eq!(bytes[4], BASE_VERSION_GRID);
        let c = Base::from_bytes(&bytes, &Limits::default()).unwrap();
        assert_eq!(c, g);
        assert!(c.grid && !c.is_audio() && c.modulation.is_none());
        assert_eq!(c.kind(), "grid");
        assert_eq!(base().kind(), "weight");
        // The same weights as a weight base are another file with another id.
        assert_ne!(
            Base::new(grid_arch(), p, "grid".into())
                .map(|b| b.id())
                .ok(),
            Some(g.id())
        );
        // A version-4 file is checked as a grid network: positional encoding (offset 13 =
        // architecture byte 5), an unknown modality and too many levels are refused.
        for (i, v) in [(13usize, 4u8), (5, 3), (8, 17)] {
            let e = Base::from_bytes(&patched(&bytes, i, v), &Limits::default()).unwrap_err();
            assert!(
                matches!(e, BaseError::Format(FormatError::InvalidField { .. })),
                "{i}: {e}"
            );
        }
        // Modality 2 makes it an audio grid base (§10.5): another kind and id, 1..=16 outputs.
        let a = Base::from_bytes(&patched(&bytes, 5, MODALITY_AUDIO), &Limits::default()).unwrap();
        assert!(a.grid && a.grid_audio && a.is_audio());
        assert_eq!(a.kind(), "audio grid");
        assert_ne!(a.id(), g.id());
        let stereo = Arch {
            out_channels: 2,
            ..grid_arch()
        };
        let n2 = stereo.num_params();
        let s2 = Base::new_audio_grid(stereo, vec![0.1; n2], String::new()).unwrap();
        assert_eq!(
            Base::from_bytes(&s2.to_bytes().unwrap(), &Limits::default()).unwrap(),
            s2
        );
        // Two outputs are also an image grid base's (gray + alpha, since stop 52); five are
        // only an audio one's.
        assert!(Base::new_grid(stereo, vec![0.1; n2], String::new()).is_ok());
        let five = Arch {
            out_channels: 5,
            ..grid_arch()
        };
        let n5 = five.num_params();
        assert!(Base::new_grid(five, vec![0.1; n5], String::new()).is_err());
        assert!(Base::new_audio_grid(five, vec![0.1; n5], String::new()).is_ok());
        let wide = Arch {
            out_channels: 17,
            ..grid_arch()
        };
        let n17 = wide.num_params();
        assert!(Base::new_audio_grid(wide, vec![0.1; n17], String::new()).is_err());
        assert!(embedded_grid_for(&grid_arch()).is_none_or(|b| !b.grid_audio));
        // And a grid architecture that is not a valid grid network cannot be written.
        let bad = Arch {
            pe_freqs: 2,
            ..grid_arch()
        };
        assert!(Base::new_grid(bad, vec![0.0; bad.num_params()], String::new()).is_err());
    }

    #[test]
    fn every_embedded_base_parses() {
        assert_eq!(embedded().len(), EMBEDDED.len());
        for (name, bytes) in EMBEDDED {
            let b = Base::from_bytes(bytes, &Limits::default()).unwrap();
            assert_eq!(b.id(), id_of(bytes), "{name}");
        }
    }

    fn spec() -> ModSpec {
        ModSpec {
            latent_dim: 3,
            cell: 8,
        }
    }

    fn mod_base() -> Base {
        let n = arch().num_params() + spec().map_len(&arch());
        Base::new_modulation(
            arch(),
            spec(),
            (0..n).map(|i| i as f32 * 0.003 - 0.1).collect(),
            "mod".into(),
        )
        .unwrap()
    }

    #[test]
    fn version_1_bytes_are_unchanged() {
        // The v1 layout written out by hand (§10.1): weight bases keep their bytes and ids.
        let b = base();
        let mut want = vec![0x89, b'I', b'N', b'B', 1, 1, 0, 0];
        arch().write(&mut want);
        want.extend_from_slice(&(b.params.len() as u32).to_le_bytes());
        want.extend_from_slice(&4u16.to_le_bytes());
        want.extend_from_slice(b"test");
        for v in &b.params {
            want.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        let crc = crc32fast::hash(&want);
        want.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(b.to_bytes().unwrap(), want);
        assert_eq!(b.modulation, None);
        // Every embedded base re-serialises to exactly its bytes (so its id is unchanged).
        for (name, bytes) in EMBEDDED {
            let e = Base::from_bytes(bytes, &Limits::default()).unwrap();
            assert_eq!(
                e.modulation.is_some(),
                bytes[4] == BASE_VERSION_MOD,
                "{name}"
            );
            assert_eq!(e.to_bytes().unwrap(), *bytes, "{name}");
        }
    }

    #[test]
    fn modulation_base_round_trips() {
        let b = mod_base();
        let bytes = b.to_bytes().unwrap();
        assert_eq!(bytes[4], BASE_VERSION_MOD);
        assert_eq!(&bytes[20..24], &[1, 3, 8, 0]);
        let n = arch().num_params() + 3 * 2 * 4;
        assert_eq!(b.expected_params(), n);
        assert_eq!(
            u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize,
            n
        );
        assert_eq!(bytes.len(), BASE_HEADER_BYTES_V2 + 3 + 4 * n + 4);
        let c = Base::from_bytes(&bytes, &Limits::default()).unwrap();
        assert_eq!(c, b);
        assert_eq!(c.modulation, Some(spec()));
        assert_eq!(c.id(), id_of(&bytes));
        assert_ne!(c.id(), base().id());
        // The same network without the spec is another base (and the writer checks counts).
        assert!(Base::new(arch(), b.params.clone(), "mod".into()).is_err());
        assert!(Base::new_modulation(arch(), spec(), base().params, String::new()).is_err());
        for bad in [
            ModSpec {
                latent_dim: 0,
                cell: 8,
            },
            ModSpec {
                latent_dim: 3,
                cell: 1,
            },
        ] {
            let n = arch().num_params() + bad.map_len(&arch());
            assert!(matches!(
                Base::new_modulation(arch(), bad, vec![0.0; n], String::new()),
                Err(BaseError::Format(FormatError::InvalidField { .. }))
            ));
        }
        // Embedded lookups never mix the kinds.
        if let Some(m) = embedded_modulation() {
            assert!(m.modulation.is_some());
        }
        for e in embedded() {
            if let Some(w) = embedded_for(&e.arch) {
                assert!(w.modulation.is_none());
            }
        }
    }

    #[test]
    fn modulation_base_corruption_is_rejected() {
        let bytes = mod_base().to_bytes().unwrap();
        let l = Limits::default();
        for n in 0..bytes.len() {
            assert!(Base::from_bytes(&bytes[..n], &l).is_err(), "{n}");
        }
        for i in 0..bytes.len() {
            for x in 1..=255u8 {
                let mut c = bytes.clone();
                c[i] ^= x;
                assert!(Base::from_bytes(&c, &l).is_err(), "{i} {x}");
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Base::from_bytes(&long, &l).is_err());
        // Hostile fields with a valid CRC.
        let with = |at: usize, v: &[u8]| {
            let mut c = bytes.clone();
            c[at..at + v.len()].copy_from_slice(v);
            let n = c.len() - 4;
            let crc = crc32fast::hash(&c[..n]);
            c[n..].copy_from_slice(&crc.to_le_bytes());
            Base::from_bytes(&c, &l)
        };
        let field = |r: Result<Base, BaseError>| match r {
            Err(BaseError::Format(FormatError::InvalidField { field, .. })) => field,
            other => panic!("expected InvalidField, got {other:?}"),
        };
        assert_eq!(field(with(20, &[0])), "base kind");
        assert_eq!(field(with(20, &[2])), "base kind");
        assert_eq!(field(with(21, &[0])), "base latent_dim");
        assert_eq!(field(with(22, &[1])), "base cell");
        assert_eq!(field(with(22, &[0])), "base cell");
        assert_eq!(field(with(23, &[1])), "base reserved byte");
        // latent_dim 2 instead of 3: N no longer matches.
        assert_eq!(field(with(21, &[2])), "base parameter count");
        // A network within the parameter limit whose map takes the total beyond it is
        // refused before allocating (width 512, depth 64: 16.6M weights + 8.4M map values).
        let mut c = bytes.clone();
        c[10..12].copy_from_slice(&512u16.to_le_bytes());
        c[12] = 64;
        c[21] = 255;
        assert!(matches!(
            Base::from_bytes(&c, &l),
            Err(BaseError::Format(FormatError::LimitExceeded {
                what: "base weight count",
                ..
            }))
        ));
        let small = Limits {
            max_params: (arch().num_params() + 3 * 2 * 4 - 1) as u64,
            ..Limits::default()
        };
        assert!(matches!(
            Base::from_bytes(&bytes, &small),
            Err(BaseError::Format(FormatError::LimitExceeded {
                what: "base weight count",
                ..
            }))
        ));
        // A v1 header on v2 bytes (and the reverse) does not parse.
        let mut c = bytes.clone();
        c[4] = 1;
        assert!(Base::from_bytes(&c, &l).is_err());
        let mut c = base().to_bytes().unwrap();
        c[4] = 2;
        assert!(Base::from_bytes(&c, &l).is_err());
        // Version 3 is an audio base (§10.4): a modulation body under it does not parse.
        let mut c = bytes.clone();
        c[4] = BASE_VERSION_AUDIO;
        assert!(Base::from_bytes(&c, &l).is_err());
        // Version 4 is a grid base (§10.5): a modulation body under it does not parse either.
        let mut c = bytes.clone();
        c[4] = BASE_VERSION_GRID;
        assert!(Base::from_bytes(&c, &l).is_err());
        let mut c = bytes.clone();
        c[4] = 5;
        assert!(matches!(
            Base::from_bytes(&c, &l),
            Err(BaseError::UnsupportedVersion { found: 5 })
        ));
    }

    fn audio_arch() -> Arch {
        Arch {
            coord_dims: 1,
            out_channels: 1,
            width: 4,
            depth: 2,
            pe_freqs: 0,
            pe_base_milli: 2000,
            w0_first: 100,
            w0_hidden: 30,
        }
    }

    fn audio_base() -> Base {
        let n = audio_arch().num_params();
        Base::new_audio(
            audio_arch(),
            512,
            (0..n).map(|i| i as f32 * 0.02 - 0.3).collect(),
            "au".into(),
        )
        .unwrap()
    }

    #[test]
    fn audio_base_round_trips_and_is_checked() {
        let b = audio_base();
        let bytes = b.to_bytes().unwrap();
        assert_eq!(&bytes[4..6], &[BASE_VERSION_AUDIO, MODALITY_AUDIO]);
        assert_eq!(&bytes[20..24], &512u32.to_le_bytes());
        let n = audio_arch().num_params();
        assert_eq!(
            u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize,
            n
        );
        assert_eq!(bytes.len(), BASE_HEADER_BYTES + 4 + 2 + 4 * n + 4);
        let l = Limits::default();
        let c = Base::from_bytes(&bytes, &l).unwrap();
        assert_eq!(c, b);
        assert_eq!(c.audio_window, Some(512));
        assert_eq!(c.id(), id_of(&bytes));
        for k in 0..bytes.len() {
            assert!(Base::from_bytes(&bytes[..k], &l).is_err(), "{k}");
        }
        for i in 0..bytes.len() {
            for x in [1u8, 0x80, 0xFF] {
                let mut c = bytes.clone();
                c[i] ^= x;
                assert!(Base::from_bytes(&c, &l).is_err(), "{i} {x}");
            }
        }
        let with = |at: usize, v: &[u8]| {
            let mut c = bytes.clone();
            c[at..at + v.len()].copy_from_slice(v);
            let n = c.len() - 4;
            let crc = crc32fast::hash(&c[..n]);
            c[n..].copy_from_slice(&crc.to_le_bytes());
            Base::from_bytes(&c, &l)
        };
        let field = |r: Result<Base, BaseError>| match r {
            Err(BaseError::Format(FormatError::InvalidField { field, .. })) => field,
            other => panic!("expected InvalidField, got {other:?}"),
        };
        assert_eq!(field(with(5, &[1])), "base modality");
        assert_eq!(field(with(20, &[0, 0, 0, 0])), "base window length");
        assert_eq!(field(with(20, &[1, 0, 0x10, 0])), "base window length");
        assert_eq!(field(with(8, &[2])), "coord_dims");
        assert_eq!(field(with(9, &[17])), "out_channels");
        // An image base with modality 2, or a v1 header on v3 bytes, does not parse.
        let mut v1 = base().to_bytes().unwrap();
        v1[5] = MODALITY_AUDIO;
        let k = v1.len() - 4;
        let crc = crc32fast::hash(&v1[..k]);
        v1[k..].copy_from_slice(&crc.to_le_bytes());
        assert!(Base::from_bytes(&v1, &l).is_err());
        let mut c = bytes.clone();
        c[4] = BASE_VERSION;
        assert!(Base::from_bytes(&c, &l).is_err());
        // Writers refuse what readers refuse.
        assert!(Base::new_audio(arch(), 512, base().params, String::new()).is_err());
        assert!(Base::new_audio(audio_arch(), 0, b.params.clone(), String::new()).is_err());
        // Lookups never mix image and audio bases.
        for e in embedded() {
            if let Some(w) = embedded_for(&e.arch) {
                assert!(w.audio_window.is_none());
            }
            if let Some(w) = e.audio_window {
                assert_eq!(embedded_audio_for(&e.arch, w).map(Base::id), Some(e.id()));
            }
        }
    }

    #[test]
    fn missing_base_names_the_id() {
        let e = find(0x1234, &[]).unwrap_err().to_string();
        assert!(e.contains("0000000000001234"), "{e}");
        let b = base();
        assert_eq!(find(b.id(), std::slice::from_ref(&b)).unwrap().id(), b.id());
    }
}
