//! Grid-mode files (flag bit 3, format version 2, `codec-spec.md` §13): per image a pyramid of
//! single-channel latent grids and a small synthesis SIREN whose inputs are the latents
//! sampled at each pixel. A child module of [`crate::format`]: it shares the reader, the fixed
//! header, the step table, the payload groups and the payload/CRC tail of the image container;
//! nothing here imports the model.
//!
//! Layout (§13.1): fixed header (30 bytes, version 2, modality 1, flags `FLAG_GRID` plus bits
//! 0, 6 and 7 below, `coord_dims` = number of latent levels L, `pe_freqs` = 0) | step table (the
//! T synthesis tensors of §6.1, then the L latent levels) | payload length | payload (§4.2
//! groups of the T synthesis tensors, then the latent stream: a `u32` length and the §5.9
//! context-coded levels) | CRC32. With a shared synthesis (§13.8, bit 0) a base reference
//! follows the step table and only the output layer's two tensors (bit 7) or none are coded;
//! with predicted latents (§13.7, bit 6) a predictor section comes before the payload length.

use super::max_abs_for_bits;
use super::{
    group_infos, read_fixed_header, read_payload_and_crc, validate_dims, Arch, FileInfo,
    FixedHeader, FormatError, Limits, QTensor, Reader, BASE_REF_BYTES, CODER_ADAPTIVE, CRC_BYTES,
    GROUP_LEN_BYTES, HEADER_BYTES, MAGIC, MODALITY_IMAGE, OFF_FLAGS, OFF_MODALITY, OFF_VERSION,
    PAYLOAD_LEN_BYTES, STEP_BYTES,
};
use crate::arm::{Arm, ArmLayout, ARM_MAX_FRAC_BITS, ARM_MAX_WIDTH};
use crate::entropy::{
    self, ArmShape, EntropyError, GridContexts, GridShape, PredShape, GRID_PRED_TAPS,
};

/// §3.4 Flag bit 3 (version 2): grid mode (§13). A grid file has flags `FLAG_GRID`, with
/// optionally bit 0 (§13.8), bit 6 ([`FLAG_GRID_PREDICT`]) and, with bit 0, bit 7
/// ([`FLAG_GRID_HEAD`]).
pub const FLAG_GRID: u16 = 1 << 3;
/// §3.4 Flag bit 6 (version 2, grid files only): predicted latents (§13.7).
pub const FLAG_GRID_PREDICT: u16 = 1 << 6;
/// §3.4 Flag bit 7 (version 2, image grid files with flag bit 0 only): the shared synthesis's
/// output layer is coded in the file (§13.8): its weights and biases, in place of the base's.
pub const FLAG_GRID_HEAD: u16 = 1 << 7;
/// §13.1 Flag bit 8 (grid files): the latent stream uses the twelve contexts of §5.9 instead
/// of five.
pub const FLAG_GRID_CONTEXTS: u16 = 1 << 8;
/// §13.5 Flag bit 10 (image grid files): the levels are upsampled with cubic B-spline taps
/// (four per axis) instead of bilinear ones.
pub const FLAG_GRID_BSPLINE: u16 = 1 << 10;
/// §5.10 Flag bit 11 (image grid files, with bit 6): the predicted latent stream splits each
/// context in three by the prediction's fractional part ([`GridContexts::TwelveSplit`], or
/// [`GridContexts::FiveSplit`] without bit 8).
pub const FLAG_GRID_FRACTION: u16 = 1 << 11;
/// §5.11 Flag bit 12 (image grid files, without bits 6, 8 and 11): the latents are coded with
/// an autoregressive context model (ARM) that the file carries (§13.9).
pub const FLAG_GRID_ARM: u16 = 1 << 12;
/// §5.11.1 Flag bit 13 (image grid files, with bit 12): the ARM-coded latent stream starts
/// each level with the 144 prior models instead of 36 flat ones ([`Arm::prior_models`]).
pub const FLAG_GRID_ARM_PRIOR: u16 = 1 << 13;
/// §13.9 Bytes of the ARM header before the per-level residual bit widths: hidden width,
/// fractional bits, bit width of the ARM's integers.
pub const ARM_HEADER_BYTES: usize = 3;

/// §13.5 How an image grid file's latent levels are upsampled to the output grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Upsampling {
    /// Two taps per axis (§13.5 steps 1–2), every file without flag bit 10.
    #[default]
    Bilinear,
    /// Four cubic B-spline taps per axis (§13.5 step 2b, flag bit 10): smoother features at
    /// about twice the sampling work.
    BSpline,
}

impl Upsampling {
    /// The name `inr info` and `--upsampling` use.
    pub fn name(self) -> &'static str {
        match self {
            Upsampling::Bilinear => "bilinear",
            Upsampling::BSpline => "b-spline",
        }
    }
}

/// §13.8 Synthesis tensors a file with flag bit 7 codes: the output layer's weights and biases.
pub const GRID_HEAD_TENSORS: usize = 2;
/// §13.7 Bytes of one level's entry in the predictor section: 5 `i16` coefficients and the
/// residual bit width.
pub const PREDICTOR_ENTRY_BYTES: usize = 2 * GRID_PRED_TAPS + 1;
/// §13.1 The version of every grid file.
pub const VERSION_GRID: u8 = 2;
/// §13.2 Most latent levels (strides 1 ..= 2^15).
pub const MAX_GRID_LEVELS: u8 = 16;
/// §13.2 Most sine layers of the synthesis network.
pub const MAX_GRID_DEPTH: u8 = 8;

/// A complete grid-mode file in memory (§13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridInrFile {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// The synthesis network; `coord_dims` is the number of latent levels L.
    pub arch: Arch,
    /// The synthesis tensors in tensor order (§6.1), then the L latent levels; level `l` has
    /// `ceil(width / 2^l) * ceil(height / 2^l)` symbols in row-major order.
    pub tensors: Vec<QTensor>,
    /// §13.7 With flag bit 6: one predictor per level (level order), and the latents are
    /// coded as prediction residuals (§5.10).
    pub predictor: Option<Vec<LevelPredictor>>,
    /// §13.8 With flag bit 0: the id of the shared synthesis network (an image grid base,
    /// §10.5) the file is rendered with; `tensors` then holds the L latent levels only, or
    /// (flag bit 7) the output layer's weights and biases, then the levels.
    pub base_id: Option<u64>,
    /// §5.9 The latent stream's context set: [`GridContexts::Twelve`] with flag bit 8.
    pub contexts: GridContexts,
    /// §13.5 The levels' upsampling: [`Upsampling::BSpline`] with flag bit 10.
    pub upsampling: Upsampling,
    /// §13.9 With flag bit 12: the ARM the latents are coded with (§5.11); `predictor` is then
    /// `None` and `contexts` [`GridContexts::Five`] (no context flag).
    pub arm: Option<Arm>,
}

/// Which synthesis tensors a grid file codes (§13.1, §13.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synthesis {
    /// All of them: the file's own network (no flag bit 0).
    Own,
    /// None: a shared network (flag bit 0).
    Shared,
    /// The output layer's two tensors, the rest shared (flag bits 0 and 7).
    SharedHead,
}

impl Synthesis {
    /// The synthesis tensors coded in the file: the last this many of `arch`'s.
    pub fn coded_tensors(self, arch: &Arch) -> usize {
        match self {
            Synthesis::Own => arch.num_tensors(),
            Synthesis::Shared => 0,
            Synthesis::SharedHead => GRID_HEAD_TENSORS.min(arch.num_tensors()),
        }
    }

    /// Whether the file names a shared network (flag bit 0).
    pub fn is_shared(self) -> bool {
        self != Synthesis::Own
    }

    /// The kind of `f`: [`Synthesis::Own`] without a base id; with one, [`Synthesis::SharedHead`]
    /// when its tensors are the levels and two more, else [`Synthesis::Shared`].
    pub fn of(f: &GridInrFile) -> Synthesis {
        if f.base_id.is_none() {
            Synthesis::Own
        } else if f.tensors.len() == usize::from(f.arch.coord_dims) + GRID_HEAD_TENSORS {
            Synthesis::SharedHead
        } else {
            Synthesis::Shared
        }
    }
}

/// §13.7 The latent predictor of one level: coefficients of the left, above, above-left,
/// above-right and parent taps in units of `2^-8` (§5.10), and the bit width `b` (2 ..= 16)
/// of the level's residual alphabet `-M(b) ..= M(b)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LevelPredictor {
    pub coefs: [i16; GRID_PRED_TAPS],
    pub res_bits: u8,
}

/// §13.7 The predicted stream's grids in coding order (coarsest level first), for the levels'
/// values `levels[l]` (level order), value bit widths and predictors.
pub fn predicted_shapes(
    dims: &[(u32, u32)],
    lens: &[usize],
    value_bits: &[u8],
    pred: &[LevelPredictor],
) -> Vec<PredShape> {
    (0..dims
        .len()
        .min(lens.len())
        .min(value_bits.len())
        .min(pred.len()))
        .rev()
        .map(|l| PredShape {
            len: lens[l],
            cols: dims[l].0 as usize,
            max_abs: max_abs_for_bits(value_bits[l]),
            res_max_abs: max_abs_for_bits(pred[l].res_bits),
            coefs: pred[l].coefs,
        })
        .collect()
}

/// Grid summary for `inspect` (§13).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GridInfo {
    /// Latent levels L.
    pub levels: u8,
    /// `(w_l, h_l)` of each level.
    pub level_dims: Vec<(u32, u32)>,
    /// Latents in all levels.
    pub latents: u64,
    /// Parameters of the synthesis network (coded in the file unless it is shared, §13.8).
    pub synth_params: u64,
    /// Bytes of the context-coded latent stream (§5.9 or §5.10), without its length field.
    pub latent_stream_bytes: u64,
    /// §5.9 Contexts of the latent stream: 5, or 12 with flag bit 8 (models per level: 36
    /// with an ARM, §5.11, 144 with its prior models, §5.11.1).
    pub latent_contexts: u8,
    /// §13.5 "bilinear", or "b-spline" with flag bit 10.
    pub upsampling: &'static str,
    /// §13.7 The per-level predictors of a file with predicted latents.
    pub predictor: Option<Vec<LevelPredictor>>,
    /// §13.9 The ARM of a file with flag bit 12.
    pub arm: Option<ArmInfo>,
}

/// §13.9 Summary of a file's ARM for `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArmInfo {
    /// Hidden width.
    pub width: u8,
    /// Fractional bits of its fixed-point weights.
    pub frac_bits: u8,
    /// Bit width its integers are coded at.
    pub bits: u8,
    /// Weights and biases.
    pub params: u64,
    /// Bytes of its coded integers (without the 4-byte length field).
    pub stream_bytes: u64,
    /// Residual bit width of each level (level order).
    pub res_bits: Vec<u8>,
    /// §5.11.1 The latents are coded with the prior models (flag bit 13).
    pub prior_models: bool,
}

/// §13.2 Sizes of the latent levels: level `l` is `ceil(width / 2^l) x ceil(height / 2^l)`.
/// `levels` above [`MAX_GRID_LEVELS`] are cut there.
pub fn grid_level_dims(width: u32, height: u32, levels: u8) -> Vec<(u32, u32)> {
    (0..levels.min(MAX_GRID_LEVELS))
        .map(|l| {
            let s = 1u32 << l;
            (width.div_ceil(s), height.div_ceil(s))
        })
        .collect()
}

/// True when `bytes` start like a grid-mode file: magic, version 2, modality 1 (image) and
/// flag bit 3 set (and bit 2 clear). Nothing else is validated; use it to choose between
/// [`read_grid_file`] and [`super::read_file`].
pub fn is_grid_file(bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(&MAGIC[..])
        && bytes.get(OFF_VERSION) == Some(&VERSION_GRID)
        && bytes.get(OFF_MODALITY) == Some(&MODALITY_IMAGE)
        && bytes.get(OFF_FLAGS..OFF_FLAGS + 2).is_some_and(|f| {
            let flags = u16::from_le_bytes([f[0], f[1]]);
            flags & FLAG_GRID != 0 && flags & super::FLAG_MODULATIONS == 0
        })
}

/// The architecture checks of a grid synthesis network (§13.1; also grid bases, §10.5):
/// `coord_dims` = latent levels 1 ..= 16, 1 ..= 4 outputs (gray, gray + alpha, RGB, RGBA),
/// `pe_freqs` 0, depth at most 8, and
/// the modality-independent checks of §3.6.
///
/// # Errors
/// [`FormatError::InvalidField`] naming the first field out of range.
pub fn validate_grid_arch(arch: &Arch, limits: &Limits) -> Result<(), FormatError> {
    validate_grid_net(
        arch,
        limits,
        |c| matches!(c, 1..=4),
        "1 ..= 4 (gray, gray + alpha, RGB, RGBA)",
    )
}

/// The checks of [`validate_grid_arch`] with another rule for the output count (`outputs`,
/// described by `expected`): an audio grid file (§14) has the clip's channels as outputs.
///
/// # Errors
/// As [`validate_grid_arch`].
pub(super) fn validate_grid_net(
    arch: &Arch,
    limits: &Limits,
    outputs: fn(u8) -> bool,
    expected: &'static str,
) -> Result<(), FormatError> {
    let bad = |field, value: u64, expected| {
        Err(FormatError::InvalidField {
            field,
            value,
            expected,
        })
    };
    if arch.coord_dims == 0 || arch.coord_dims > MAX_GRID_LEVELS {
        return bad(
            "coord_dims (latent levels)",
            arch.coord_dims.into(),
            "1..=16 latent levels in a grid file",
        );
    }
    if !outputs(arch.out_channels) {
        return bad("out_channels", arch.out_channels.into(), expected);
    }
    if arch.pe_freqs != 0 {
        return bad("pe_freqs", arch.pe_freqs.into(), "0 in a grid file");
    }
    if arch.depth > MAX_GRID_DEPTH {
        return bad("depth", arch.depth.into(), "1..=8 in a grid file");
    }
    arch.validate_net(limits)
}

/// §13.2, §13.4: image size, synthesis architecture, latent count and rendering work against
/// `limits`. Returns the tensor lengths (synthesis tensors, then levels).
///
/// # Errors
/// [`FormatError::InvalidField`] / [`FormatError::LimitExceeded`] naming the first failed check.
pub fn grid_tensor_lens(
    width: u32,
    height: u32,
    arch: &Arch,
    limits: &Limits,
) -> Result<Vec<usize>, FormatError> {
    validate_dims(width, height, limits)?;
    validate_grid_arch(arch, limits)?;
    let dims = grid_level_dims(width, height, arch.coord_dims);
    let latents: u64 = dims.iter().map(|&(w, h)| u64::from(w) * u64::from(h)).sum();
    if latents > limits.max_latents {
        return Err(FormatError::LimitExceeded {
            what: "latent count (all grid levels)",
            value: latents,
            limit: limits.max_latents,
        });
    }
    // Per pixel: the network and 4 bilinear taps per level.
    let work = arch.num_params_u64() + 4 * u64::from(arch.coord_dims);
    limits.check_render(width, height, work)?;
    let mut lens = arch.tensor_lens();
    lens.extend(dims.iter().map(|&(w, h)| (w as usize) * (h as usize)));
    Ok(lens)
}

/// Serialises a grid file (§13), validating it first with [`Limits::default`].
///
/// # Errors
/// [`FormatError::InvalidField`] / [`FormatError::LimitExceeded`] for values a default decoder
/// would reject (including a tensor `bits` outside 2..=16), [`FormatError::TensorCount`] /
/// [`FormatError::TensorLength`] when the tensors do not match the architecture and the
/// pyramid, [`FormatError::Entropy`] for a symbol outside its tensor's range.
///
/// # Panics
/// Never.
pub fn write_grid_file(f: &GridInrFile) -> Result<Vec<u8>, FormatError> {
    let limits = Limits::default();
    if f.contexts.splits_fraction() && f.predictor.is_none() {
        return Err(FormatError::InvalidField {
            field: "latent contexts",
            value: f.contexts.pred_models() as u64,
            expected: "the fractional split (flag bit 11) only with predicted latents",
        });
    }
    if let Some(arm) = &f.arm {
        check_arm_coding(
            arm,
            f.predictor.is_some(),
            f.contexts,
            usize::from(f.arch.coord_dims),
            FormatError::InvalidField {
                field: "latent coding",
                value: u64::from(FLAG_GRID_ARM),
                expected: "an ARM-coded file (flag bit 12) without predictor or context flags",
            },
        )?;
    }
    let synth = Synthesis::of(f);
    let lens = file_lens(
        grid_tensor_lens(f.width, f.height, &f.arch, &limits)?,
        &f.arch,
        synth,
    );
    let dims = grid_level_dims(f.width, f.height, f.arch.coord_dims);
    let (bits, body) = write_grid_body(
        &f.arch,
        &dims,
        &lens,
        &f.tensors,
        f.base_id,
        f.predictor.as_deref(),
        f.contexts,
        f.arm.as_ref().map(|a| (a, ArmLayout::Image)),
        &limits,
    )?;
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len() + CRC_BYTES);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION_GRID);
    out.push(MODALITY_IMAGE);
    let flags = grid_flags(
        synth,
        f.predictor.is_some(),
        f.contexts,
        f.upsampling,
        f.arm.as_ref().map(|a| a.prior_models),
    );
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&f.width.to_le_bytes());
    out.extend_from_slice(&f.height.to_le_bytes());
    f.arch.write(&mut out);
    out.push(bits);
    out.push(CODER_ADAPTIVE);
    out.extend_from_slice(&body);
    super::finish_file(out, &limits)
}

/// The flags of an image grid file (§3.4, §13.1): bit 3, bit 0 with a shared synthesis
/// (§13.8) and bit 7 when its output layer is coded, bit 6 with predicted latents (§13.7), bit
/// 8 with the twelve latent contexts (§5.9), bit 11 with the contexts' fractional split (§5.10),
/// bit 10 with B-spline upsampling (§13.5), bit 12 with an ARM (§13.9) and bit 13 when its
/// stream uses the prior models (§5.11.1).
fn grid_flags(
    synth: Synthesis,
    predicted: bool,
    contexts: GridContexts,
    upsampling: Upsampling,
    arm: Option<bool>,
) -> u16 {
    let mut flags = FLAG_GRID;
    if let Some(prior) = arm {
        flags |= FLAG_GRID_ARM;
        if prior {
            flags |= FLAG_GRID_ARM_PRIOR;
        }
    }
    if upsampling == Upsampling::BSpline {
        flags |= FLAG_GRID_BSPLINE;
    }
    if contexts.count() == GridContexts::Twelve.count() {
        flags |= FLAG_GRID_CONTEXTS;
    }
    if contexts.splits_fraction() {
        flags |= FLAG_GRID_FRACTION;
    }
    if synth.is_shared() {
        flags |= super::FLAG_BASE;
    }
    if synth == Synthesis::SharedHead {
        flags |= FLAG_GRID_HEAD;
    }
    if predicted {
        flags |= FLAG_GRID_PREDICT;
    }
    flags
}

/// The coded tensors' lengths of a file of `arch` (`lens`: synthesis tensors, then levels):
/// only the synthesis tensors `synth` codes (§13.8), then the levels.
fn file_lens(mut lens: Vec<usize>, arch: &Arch, synth: Synthesis) -> Vec<usize> {
    let t = arch.num_tensors();
    lens.drain(..(t - synth.coded_tensors(arch)).min(lens.len()));
    lens
}

/// The body of a grid (§13.1 from the step table to the payload's end; also an audio grid
/// segment, §14): step table, base reference (with `base_id`, §13.8), predictor section (with
/// `predictor`), payload length and payload (§13.3) of `tensors` (the coded synthesis tensors,
/// then the levels of `dims`), which must have the lengths `lens`.
/// Returns the largest bit width of its entries and the bytes.
///
/// # Errors
/// As [`write_grid_file`].
#[allow(clippy::too_many_arguments)]
pub(super) fn write_grid_body(
    arch: &Arch,
    dims: &[(u32, u32)],
    lens: &[usize],
    tensors: &[QTensor],
    base_id: Option<u64>,
    predictor: Option<&[LevelPredictor]>,
    contexts: GridContexts,
    arm: Option<(&Arm, ArmLayout)>,
    limits: &Limits,
) -> Result<(u8, Vec<u8>), FormatError> {
    if tensors.len() != lens.len() {
        return Err(FormatError::TensorCount {
            expected: lens.len(),
            found: tensors.len(),
        });
    }
    for (index, (t, &n)) in tensors.iter().zip(lens).enumerate() {
        t.step.validate()?;
        super::validate_bits("tensor bits", t.bits)?;
        if t.symbols.len() != n {
            return Err(FormatError::TensorLength {
                index,
                expected: n,
                found: t.symbols.len(),
            });
        }
    }
    let bits = tensors.iter().map(|t| t.bits).max().unwrap_or(0);
    // The synthesis tensors are those before the levels (all, none or the output layer's).
    let n_synth = lens.len().saturating_sub(dims.len());
    if n_synth > arch.num_tensors() || lens.len() < dims.len() {
        return Err(FormatError::TensorCount {
            expected: arch.num_tensors() + dims.len(),
            found: lens.len(),
        });
    }
    let (synth, levels) = tensors.split_at(n_synth.min(tensors.len()));
    let refs: Vec<&QTensor> = synth.iter().collect();
    let mut payload = super::write_groups(&refs, limits)?;
    let n_levels = levels.len();
    let mut arm_header = Vec::new();
    let stream = match (predictor, arm) {
        (Some(_), Some(_)) => {
            return Err(FormatError::InvalidField {
                field: "latent coding",
                value: u64::from(FLAG_GRID_ARM),
                expected: "an ARM or a predictor, not both",
            })
        }
        (None, Some((arm, layout))) => {
            let grids: Vec<(&[i32], ArmShape)> = levels
                .iter()
                .zip(dims)
                .enumerate()
                .rev()
                .map(|(l, (t, &(w, _)))| {
                    let shape = ArmShape {
                        len: t.symbols.len(),
                        cols: w as usize,
                        max_abs: max_abs_for_bits(t.bits),
                        res_max_abs: 0,
                        level: l,
                        layout,
                    };
                    (t.symbols.as_slice(), shape)
                })
                .collect();
            let (mut res_bits, stream) = entropy::encode_arm_grids_fitted(&grids, arm)
                .map_err(|e| renumber(e, |k| n_synth + n_levels - 1 - k))?;
            res_bits.reverse(); // level order
            let (arm_bits, arm_stream) = write_arm_tensors(arm)?;
            arm_header.push(arm.width as u8); // <= ARM_MAX_WIDTH, checked by write_arm_tensors
            arm_header.push(arm.frac_bits);
            arm_header.push(arm_bits);
            arm_header.extend_from_slice(&res_bits);
            super::check_section("ARM stream", arm_stream.len() as u64, limits)?;
            payload.extend_from_slice(&(arm_stream.len() as u32).to_le_bytes());
            payload.extend_from_slice(&arm_stream);
            stream
        }
        (None, None) => {
            let grids: Vec<(&[i32], GridShape)> = levels
                .iter()
                .zip(dims)
                .map(|(t, &(w, _))| {
                    (
                        t.symbols.as_slice(),
                        level_shape(t.bits, t.symbols.len(), w),
                    )
                })
                .collect();
            entropy::encode_grids(&grids, contexts).map_err(|e| renumber(e, |t| t + n_synth))?
        }
        (Some(pred), None) => {
            if pred.len() != n_levels {
                return Err(FormatError::InvalidField {
                    field: "predictor levels",
                    value: pred.len() as u64,
                    expected: "one predictor per latent level",
                });
            }
            for p in pred {
                super::validate_bits("residual bits", p.res_bits)?;
            }
            let lens: Vec<usize> = levels.iter().map(|t| t.symbols.len()).collect();
            let bits: Vec<u8> = levels.iter().map(|t| t.bits).collect();
            let shapes = predicted_shapes(dims, &lens, &bits, pred);
            let grids: Vec<(&[i32], PredShape)> = levels
                .iter()
                .rev()
                .map(|t| t.symbols.as_slice())
                .zip(shapes)
                .collect();
            // Coding order is coarsest first: grid k is level n_levels - 1 - k.
            entropy::encode_pred_grids(&grids, contexts)
                .map_err(|e| renumber(e, |k| n_synth + n_levels - 1 - k))?
        }
    };
    super::check_section("latent stream", stream.len() as u64, limits)?;
    let len = u32::try_from(stream.len()).map_err(|_| FormatError::PayloadTooLarge {
        len: stream.len() as u64,
    })?;
    payload.extend_from_slice(&len.to_le_bytes());
    payload.extend_from_slice(&stream);
    super::check_section("payload", payload.len() as u64, limits)?;
    let payload_len = u32::try_from(payload.len()).map_err(|_| FormatError::PayloadTooLarge {
        len: payload.len() as u64,
    })?;
    let mut out = Vec::with_capacity(
        STEP_BYTES * lens.len()
            + BASE_REF_BYTES
            + predictor.map_or(0, |p| p.len() * PREDICTOR_ENTRY_BYTES)
            + arm_header.len()
            + PAYLOAD_LEN_BYTES
            + payload.len(),
    );
    for t in tensors {
        out.extend_from_slice(&t.step.mantissa.to_le_bytes());
        out.push(t.step.exponent);
        out.push(t.bits);
    }
    if let Some(id) = base_id {
        out.extend_from_slice(&id.to_le_bytes());
    }
    for p in predictor.into_iter().flatten() {
        for c in p.coefs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out.push(p.res_bits);
    }
    out.extend_from_slice(&arm_header);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok((bits, out))
}

/// §13.9, §14.2 An ARM codes latents without a predictor, with the five plain contexts, and
/// has one layer-1 bias row per latent level: `coding` is the error for the first rule.
pub(super) fn check_arm_coding(
    arm: &Arm,
    predicted: bool,
    contexts: GridContexts,
    levels: usize,
    coding: FormatError,
) -> Result<(), FormatError> {
    if predicted || contexts != GridContexts::Five {
        return Err(coding);
    }
    if arm.levels != levels {
        return Err(FormatError::InvalidField {
            field: "ARM levels",
            value: arm.levels as u64,
            expected: "one layer-1 bias row per latent level",
        });
    }
    Ok(())
}

/// §13.9 The ARM's integers (tensors in [`Arm::tensors`] order) coded as one §5 group at the
/// smallest bit width that holds them: `(bit width, stream)`.
fn write_arm_tensors(arm: &Arm) -> Result<(u8, Vec<u8>), FormatError> {
    let bad = |field, value: u64, expected| FormatError::InvalidField {
        field,
        value,
        expected,
    };
    if arm.width == 0 || arm.width > ARM_MAX_WIDTH {
        return Err(bad("ARM width", arm.width as u64, "1..=32"));
    }
    if !(1..=ARM_MAX_FRAC_BITS).contains(&arm.frac_bits) {
        return Err(bad("ARM fractional bits", arm.frac_bits.into(), "1..=8"));
    }
    let lens = Arm::tensor_lens(arm.width, arm.levels);
    let tensors = arm.tensors();
    if tensors.iter().zip(lens).any(|(t, n)| t.len() != n) {
        return Err(bad("ARM tensors", 0, "the sizes of its width and levels"));
    }
    let m = tensors
        .iter()
        .flat_map(|t| t.iter())
        .map(|v| v.unsigned_abs())
        .max()
        .unwrap_or(0)
        .max(1);
    if m > entropy::MAX_ABS_LIMIT {
        return Err(bad("ARM weight", m.into(), "at most 32767 in magnitude"));
    }
    let bits = (33 - m.leading_zeros()).max(2) as u8;
    let stream = entropy::encode_tensors(&tensors, max_abs_for_bits(bits))?;
    Ok((bits, stream))
}

/// Bytes the ARM section of a file with `arm` takes (§13.9: header, residual widths, the
/// ARM stream and its length field), for an encoder choosing among ARMs.
///
/// # Errors
/// As [`write_grid_file`] for an invalid ARM.
pub fn arm_coded_bytes(arm: &Arm) -> Result<usize, FormatError> {
    Ok(ARM_HEADER_BYTES + arm.levels + GROUP_LEN_BYTES + write_arm_tensors(arm)?.1.len())
}

/// The error `e` with a symbol-range error's tensor index mapped by `f`.
fn renumber(e: EntropyError, f: impl Fn(usize) -> usize) -> EntropyError {
    match e {
        EntropyError::SymbolOutOfRange {
            tensor,
            index,
            value,
            max_abs,
        } => EntropyError::SymbolOutOfRange {
            tensor: f(tensor),
            index,
            value,
            max_abs,
        },
        other => other,
    }
}

/// §5.9 shape of a latent level of `len` symbols in rows of `cols`, alphabet of `bits`.
fn level_shape(bits: u8, len: usize, cols: u32) -> GridShape {
    GridShape {
        len,
        cols: cols as usize,
        max_abs: max_abs_for_bits(bits),
    }
}

struct ParsedGrid<'a> {
    width: u32,
    height: u32,
    arch: Arch,
    bits: u8,
    lens: Vec<usize>,
    base_id: Option<u64>,
    synth: Synthesis,
    contexts: GridContexts,
    upsampling: Upsampling,
    body: GridBody<'a>,
}

/// The tables and payload of a grid body (§13.1, §14 segments), validated but not
/// entropy-decoded.
pub(super) struct GridBody<'a> {
    pub(super) steps: Vec<super::Step>,
    pub(super) tensor_bits: Vec<u8>,
    pub(super) groups: Vec<(u8, &'a [u8])>,
    pub(super) latent_stream: &'a [u8],
    pub(super) predictor: Option<Vec<LevelPredictor>>,
    /// §13.9 The ARM header and the ARM's stream (flag bit 12).
    pub(super) arm: Option<(ArmHeader, &'a [u8])>,
}

/// §13.9 The ARM header of a file with flag bit 12, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ArmHeader {
    width: usize,
    frac_bits: u8,
    bits: u8,
    /// Residual bit width of each level (level order).
    res_bits: Vec<u8>,
    /// §5.11.1 The stream uses the prior models (flag bit 13; never in audio segments).
    pub(super) prior_models: bool,
}

/// What `inspect` reports of an ARM with header `h` over `levels` levels and ARM stream `stream`.
pub(super) fn arm_info(h: &ArmHeader, stream: &[u8], levels: usize) -> ArmInfo {
    ArmInfo {
        width: h.width as u8,
        frac_bits: h.frac_bits,
        bits: h.bits,
        params: h.params(levels) as u64,
        stream_bytes: stream.len() as u64,
        res_bits: h.res_bits.clone(),
        prior_models: h.prior_models,
    }
}

impl ArmHeader {
    /// The ARM's weights and biases over `levels` levels.
    pub(super) fn params(&self, levels: usize) -> usize {
        Arm::tensor_lens(self.width, levels).iter().sum()
    }

    /// Reads and checks the header of an ARM over `levels` levels from `b` (§13.9).
    pub(super) fn parse(b: &[u8], levels: usize) -> Result<ArmHeader, FormatError> {
        let bad = |field, value: u8, expected| FormatError::InvalidField {
            field,
            value: value.into(),
            expected,
        };
        let (&[w, f, bits], res) = (
            b.first_chunk::<ARM_HEADER_BYTES>()
                .ok_or(FormatError::Truncated {
                    what: "ARM header",
                    needed: ARM_HEADER_BYTES as u64,
                    available: b.len() as u64,
                })?,
            &b[ARM_HEADER_BYTES.min(b.len())..],
        );
        if w == 0 || usize::from(w) > ARM_MAX_WIDTH {
            return Err(bad("ARM width", w, "1..=32"));
        }
        if !(1..=ARM_MAX_FRAC_BITS).contains(&f) {
            return Err(bad("ARM fractional bits", f, "1..=8"));
        }
        super::validate_bits("ARM bits", bits)?;
        if res.len() != levels {
            return Err(FormatError::Truncated {
                what: "ARM residual bit widths",
                needed: levels as u64,
                available: res.len() as u64,
            });
        }
        for &r in res {
            super::validate_bits("residual bits", r)?;
        }
        Ok(ArmHeader {
            width: w.into(),
            frac_bits: f,
            bits,
            res_bits: res.to_vec(),
            prior_models: false,
        })
    }

    /// This header of a stream with the prior models of §5.11.1, whose residual bit widths
    /// are at most [`entropy::ARM_PRIOR_MAX_RES_BITS`].
    pub(super) fn with_prior_models(mut self) -> Result<ArmHeader, FormatError> {
        if let Some(&r) = self
            .res_bits
            .iter()
            .find(|&&r| r > entropy::ARM_PRIOR_MAX_RES_BITS)
        {
            return Err(FormatError::InvalidField {
                field: "residual bits",
                value: r.into(),
                expected: "2..=12 with the ARM's prior models (flag bit 13)",
            });
        }
        self.prior_models = true;
        Ok(self)
    }
}

/// The tables of a grid body before its payload length.
pub(super) struct Tables<'a> {
    pub(super) step_bytes: &'a [u8],
    /// §13.8 The shared synthesis's base id.
    pub(super) base_id: Option<u64>,
    pub(super) pred_bytes: Option<&'a [u8]>,
}

/// Takes the step table (the synthesis tensors `synth` codes, then the levels), when the
/// synthesis is shared the base reference (§13.8) and, when `predicted`, the predictor section
/// of a body of `arch` from `r`. `coord_dims` <= 255 levels and depth <= 255: the step table is
/// at most 4 * (512 + 255) bytes, and is only taken if present.
pub(super) fn take_tables<'a>(
    r: &mut Reader<'a>,
    arch: &Arch,
    synth: Synthesis,
    predicted: bool,
) -> Result<Tables<'a>, FormatError> {
    let n_tensors = synth.coded_tensors(arch) + usize::from(arch.coord_dims);
    let step_bytes = r.take(n_tensors * STEP_BYTES, "step table")?;
    let base_id = if synth.is_shared() {
        let b = r.take(BASE_REF_BYTES, "base reference")?;
        Some(u64::from_le_bytes(std::array::from_fn(|k| b[k])))
    } else {
        None
    };
    let pred_bytes = if predicted {
        Some(r.take(
            usize::from(arch.coord_dims) * PREDICTOR_ENTRY_BYTES,
            "predictor section",
        )?)
    } else {
        None
    };
    Ok(Tables {
        step_bytes,
        base_id,
        pred_bytes,
    })
}

/// Splits a body's `payload` (§13.3) into the synthesis groups and the latent stream and
/// reads its predictor section, for the validated step entries `steps` / `tensor_bits`.
pub(super) fn parse_body<'a>(
    arch: &Arch,
    steps: Vec<super::Step>,
    tensor_bits: Vec<u8>,
    pred_bytes: Option<&'a [u8]>,
    arm: Option<ArmHeader>,
    payload: &'a [u8],
    limits: &Limits,
) -> Result<GridBody<'a>, FormatError> {
    // The step entries before the levels are the coded synthesis tensors.
    let n_synth = tensor_bits
        .len()
        .saturating_sub(usize::from(arch.coord_dims));
    let mut g = Reader {
        bytes: payload,
        pos: 0,
    };
    let groups = super::read_groups(
        &mut g,
        &tensor_bits[..n_synth.min(tensor_bits.len())],
        limits,
    )?;
    let arm = match arm {
        Some(h) => {
            let len = g.word_len("ARM stream length")?;
            super::check_section("ARM stream", u64::from(len), limits)?;
            Some((h, g.take(len as usize, "ARM stream")?))
        }
        None => None,
    };
    let latent_len = g.word_len("latent stream length")?;
    let latent_stream = g.take(latent_len as usize, "latent stream")?;
    let predictor = pred_bytes
        .map(|b| -> Result<Vec<LevelPredictor>, FormatError> {
            b.chunks_exact(PREDICTOR_ENTRY_BYTES)
                .map(|e| {
                    let coefs =
                        std::array::from_fn(|k| i16::from_le_bytes([e[2 * k], e[2 * k + 1]]));
                    let res_bits = e[2 * GRID_PRED_TAPS];
                    super::validate_bits("residual bits", res_bits)?;
                    Ok(LevelPredictor { coefs, res_bits })
                })
                .collect()
        })
        .transpose()?;
    super::check_section("latent stream", u64::from(latent_len), limits)?;
    if g.pos != payload.len() {
        return Err(FormatError::PayloadGroups {
            used: g.pos as u64,
            len: payload.len() as u64,
        });
    }
    Ok(GridBody {
        steps,
        tensor_bits,
        groups,
        latent_stream,
        predictor,
        arm,
    })
}

fn parse_grid<'a>(bytes: &'a [u8], limits: &Limits) -> Result<ParsedGrid<'a>, FormatError> {
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
    if version != VERSION_GRID {
        return Err(FormatError::InvalidField {
            field: "version",
            value: version.into(),
            expected: "2 (grid files); a version-1 file is a plain image file: read it with \
                       the image reader (format::read_file)",
        });
    }
    if modality != MODALITY_IMAGE {
        return Err(FormatError::InvalidField {
            field: "modality",
            value: modality.into(),
            expected: "1 (image)",
        });
    }
    const KNOWN: u16 = FLAG_GRID
        | FLAG_GRID_PREDICT
        | super::FLAG_BASE
        | FLAG_GRID_HEAD
        | FLAG_GRID_CONTEXTS
        | FLAG_GRID_BSPLINE
        | FLAG_GRID_FRACTION
        | FLAG_GRID_ARM
        | FLAG_GRID_ARM_PRIOR;
    if flags & !KNOWN != 0 {
        return Err(FormatError::UnknownFlags {
            flags,
            known: KNOWN,
            version,
        });
    }
    if flags & FLAG_GRID == 0 {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "0x0008, 0x0009, 0x0048, 0x0049, 0x0089 or 0x00c9, each also with \
                       0x0100 and 0x0400, and 0x0800 with 0x0040 (grid mode); without flag bit 3 this is a plain image file: read \
                       it with the image reader (format::read_file)",
        });
    }
    let synth = match (flags & super::FLAG_BASE != 0, flags & FLAG_GRID_HEAD != 0) {
        (false, false) => Synthesis::Own,
        (true, false) => Synthesis::Shared,
        (true, true) => Synthesis::SharedHead,
        (false, true) => {
            return Err(FormatError::InvalidField {
                field: "flags",
                value: flags.into(),
                expected: "flag bit 7 (a coded output layer) only with bit 0 (a shared synthesis)",
            })
        }
    };
    if flags & FLAG_GRID_FRACTION != 0 && flags & FLAG_GRID_PREDICT == 0 {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "flag bit 11 (split latent contexts) only with bit 6 (predicted latents)",
        });
    }
    let with_arm = flags & FLAG_GRID_ARM != 0;
    if with_arm && flags & (FLAG_GRID_PREDICT | FLAG_GRID_CONTEXTS | FLAG_GRID_FRACTION) != 0 {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "flag bit 12 (an ARM) without bits 6, 8 and 11",
        });
    }
    if flags & FLAG_GRID_ARM_PRIOR != 0 && !with_arm {
        return Err(FormatError::InvalidField {
            field: "flags",
            value: flags.into(),
            expected: "flag bit 13 (the ARM's prior models) only with bit 12 (an ARM)",
        });
    }
    let t = take_tables(&mut r, &arch, synth, flags & FLAG_GRID_PREDICT != 0)?;
    let arm = if with_arm {
        let levels = usize::from(arch.coord_dims);
        let mut h = ArmHeader::parse(r.take(ARM_HEADER_BYTES + levels, "ARM header")?, levels)?;
        if flags & FLAG_GRID_ARM_PRIOR != 0 {
            h = h.with_prior_models()?;
        }
        // Decoding evaluates the ARM once per latent (at most 4/3 per pixel).
        let params = h.params(levels);
        limits.check_render(width, height, 2 * params as u64)?;
        Some(h)
    } else {
        None
    };
    let payload = read_payload_and_crc(&mut r, bytes)?;
    let lens = file_lens(
        grid_tensor_lens(width, height, &arch, limits)?,
        &arch,
        synth,
    );
    let (steps, tensor_bits) = super::validate_coding(
        bits,
        coder,
        payload.len(),
        t.step_bytes,
        "tensor bits",
        limits,
    )?;
    let body = parse_body(
        &arch,
        steps,
        tensor_bits,
        t.pred_bytes,
        arm,
        payload,
        limits,
    )?;
    Ok(ParsedGrid {
        width,
        height,
        arch,
        bits,
        lens,
        base_id: t.base_id,
        synth,
        contexts: {
            let set = if flags & FLAG_GRID_CONTEXTS != 0 {
                GridContexts::Twelve
            } else {
                GridContexts::Five
            };
            if flags & FLAG_GRID_FRACTION != 0 {
                set.split()
            } else {
                set
            }
        },
        upsampling: if flags & FLAG_GRID_BSPLINE != 0 {
            Upsampling::BSpline
        } else {
            Upsampling::Bilinear
        },
        body,
    })
}

/// Entropy-decodes a body whose levels have the sizes `dims` and whose tensors have the
/// lengths `lens` (§13.4 step 6): the tensors (synthesis unless shared, then levels in level
/// order) and the predictors.
pub(super) fn decode_body(
    body: GridBody<'_>,
    dims: &[(u32, u32)],
    lens: &[usize],
    contexts: GridContexts,
    layout: ArmLayout,
) -> Result<DecodedBody, FormatError> {
    let n_synth = lens.len().saturating_sub(dims.len());
    let mut symbols =
        super::decode_groups(&body.groups, &body.tensor_bits[..n_synth], &lens[..n_synth])?;
    let mut arm = None;
    match (&body.predictor, &body.arm) {
        (_, Some((h, arm_stream))) => {
            let levels = dims.len();
            let t = entropy::decode_tensors(
                arm_stream,
                &Arm::tensor_lens(h.width, levels),
                max_abs_for_bits(h.bits),
            )?;
            let a = Arm::from_tensors(h.width, h.frac_bits, levels, t)
                .ok_or(FormatError::InvalidField {
                    field: "ARM",
                    value: h.width as u64,
                    expected: "an ARM of its header's width and levels",
                })?
                .with_prior_models(h.prior_models);
            let shapes: Vec<ArmShape> = (0..levels)
                .rev()
                .map(|l| ArmShape {
                    len: lens[n_synth + l],
                    cols: dims[l].0 as usize,
                    max_abs: max_abs_for_bits(body.tensor_bits[n_synth + l]),
                    res_max_abs: max_abs_for_bits(h.res_bits[l]),
                    level: l,
                    layout,
                })
                .collect();
            let mut levels = entropy::decode_arm_grids(body.latent_stream, &shapes, &a)?;
            levels.reverse();
            symbols.extend(levels);
            arm = Some(a);
        }
        (None, None) => {
            let shapes: Vec<GridShape> = body.tensor_bits[n_synth..]
                .iter()
                .zip(&lens[n_synth..])
                .zip(dims)
                .map(|((&b, &n), &(w, _))| level_shape(b, n, w))
                .collect();
            symbols.extend(entropy::decode_grids(
                body.latent_stream,
                &shapes,
                contexts,
            )?);
        }
        (Some(pred), None) => {
            let shapes =
                predicted_shapes(dims, &lens[n_synth..], &body.tensor_bits[n_synth..], pred);
            // Decoded coarsest first; stored in level order.
            let mut levels = entropy::decode_pred_grids(body.latent_stream, &shapes, contexts)?;
            levels.reverse();
            symbols.extend(levels);
        }
    }
    let tensors = body
        .steps
        .into_iter()
        .zip(body.tensor_bits)
        .zip(symbols)
        .map(|((step, bits), symbols)| QTensor {
            step,
            bits,
            symbols,
        })
        .collect();
    Ok((tensors, body.predictor, arm))
}

/// A decoded grid body: tensors, predictors (§13.7) and ARM (§13.9).
pub(super) type DecodedBody = (Vec<QTensor>, Option<Vec<LevelPredictor>>, Option<Arm>);

/// Parses and entropy-decodes a grid file (§13.4).
///
/// # Errors
/// Every malformed, truncated, damaged or over-limit input gives a [`FormatError`].
///
/// # Panics
/// Never, for any input.
pub fn read_grid_file(bytes: &[u8], limits: &Limits) -> Result<GridInrFile, FormatError> {
    read_grid_file_with(bytes, limits, |_, _, _| Ok::<(), FormatError>(()))
}

/// [`read_grid_file`] with a check of the parsed architecture, base id and synthesis kind
/// that runs before the payload is entropy-decoded (the decoder looks up a shared synthesis
/// there, so that a file whose header disagrees with its base is refused as such, whatever its
/// payload).
///
/// # Errors
/// As [`read_grid_file`], and whatever `check` returns.
pub fn read_grid_file_with<E: From<FormatError>>(
    bytes: &[u8],
    limits: &Limits,
    check: impl FnOnce(&Arch, Option<u64>, Synthesis) -> Result<(), E>,
) -> Result<GridInrFile, E> {
    let p = parse_grid(bytes, limits)?;
    check(&p.arch, p.base_id, p.synth)?;
    let dims = grid_level_dims(p.width, p.height, p.arch.coord_dims);
    let _ = p.bits; // validated: equals the largest tensor bit width
    let (tensors, predictor, arm) =
        decode_body(p.body, &dims, &p.lens, p.contexts, ArmLayout::Image)?;
    Ok(GridInrFile {
        arm,
        width: p.width,
        height: p.height,
        arch: p.arch,
        tensors,
        predictor,
        base_id: p.base_id,
        contexts: p.contexts,
        upsampling: p.upsampling,
    })
}

/// Header and section sizes of a grid file without entropy decoding (§13.4 steps 1–5).
pub(super) fn inspect_grid(bytes: &[u8], limits: &Limits) -> Result<FileInfo, FormatError> {
    let p = parse_grid(bytes, limits)?;
    let total = bytes.len() as u64;
    let num_tensors = p.body.steps.len();
    let n_synth = num_tensors.saturating_sub(usize::from(p.arch.coord_dims));
    let groups = group_infos(&p.body.groups, &p.body.tensor_bits[..n_synth]);
    let latent_stream_bytes = p.body.latent_stream.len() as u64;
    let arm = p
        .body
        .arm
        .as_ref()
        .map(|(h, st)| arm_info(h, st, usize::from(p.arch.coord_dims)));
    let arm_bytes = arm.as_ref().map_or(0, |a| a.stream_bytes);
    let payload_bytes: u64 =
        groups.iter().map(|g| g.bytes).sum::<u64>() + latent_stream_bytes + arm_bytes;
    let pixels = u64::from(p.width) * u64::from(p.height);
    let level_dims = grid_level_dims(p.width, p.height, p.arch.coord_dims);
    let latents: u64 = level_dims
        .iter()
        .map(|&(w, h)| u64::from(w) * u64::from(h))
        .sum();
    let synth_params = p.arch.num_params_u64();
    // The synthesis parameters the file codes: all, none, or the output layer's.
    let coded_synth: u64 = p
        .arch
        .tensor_lens()
        .iter()
        .rev()
        .take(p.synth.coded_tensors(&p.arch))
        .map(|&n| n as u64)
        .sum();
    let pred_bytes = p
        .body
        .predictor
        .as_ref()
        .map_or(0, |v| v.len() * PREDICTOR_ENTRY_BYTES);
    Ok(FileInfo {
        version: VERSION_GRID,
        flags: grid_flags(
            p.synth,
            p.body.predictor.is_some(),
            p.contexts,
            p.upsampling,
            p.body.arm.as_ref().map(|(h, _)| h.prior_models),
        ),
        base_id: p.base_id.map(|id| format!("{id:016x}")),
        modality: "image",
        width: p.width,
        height: p.height,
        channels: p.arch.out_channels,
        arch: p.arch,
        num_params: latents + coded_synth,
        bits: p.bits,
        coder: CODER_ADAPTIVE,
        num_tensors,
        steps: p.body.steps,
        tensor_bits: p.body.tensor_bits,
        header_bytes: HEADER_BYTES as u64,
        side_info_bytes: (STEP_BYTES * num_tensors
            + p.base_id.map_or(0, |_| BASE_REF_BYTES)
            + pred_bytes
            + p.body.arm.as_ref().map_or(0, |(h, _)| {
                ARM_HEADER_BYTES + h.res_bits.len() + GROUP_LEN_BYTES
            })
            + PAYLOAD_LEN_BYTES
            + GROUP_LEN_BYTES * (groups.len() + 1)) as u64,
        payload_bytes,
        groups,
        crc_bytes: CRC_BYTES as u64,
        total_bytes: total,
        bpp: 8.0 * total as f64 / pixels.max(1) as f64,
        audio: None,
        sparsity: None,
        codebooks: None,
        modulation: None,
        grid: Some(GridInfo {
            levels: p.arch.coord_dims,
            level_dims,
            latents,
            synth_params,
            latent_stream_bytes,
            latent_contexts: if arm.as_ref().is_some_and(|a| a.prior_models) {
                entropy::ARM_PRIOR_MODELS
            } else if arm.is_some() {
                entropy::ARM_MODELS
            } else if p.body.predictor.is_some() {
                p.contexts.pred_models()
            } else {
                p.contexts.count()
            } as u8,
            upsampling: p.upsampling.name(),
            predictor: p.body.predictor,
            arm,
        }),
    })
}
