//! Entropy layer: codes sequences of small signed integers (quantized network weights) with an
//! adaptive integer frequency model and constriction's range coder (`codec-spec.md` §5).
//!
//! The module knows nothing about networks: it codes a list of `i32` slices ("tensors") whose
//! symbols all lie in `-max_abs..=max_abs`. All tensors of one call go into ONE range-coder
//! stream, in natural order. (The container calls it once per payload group, i.e. once per
//! distinct tensor bit width, with that width's `max_abs`: `codec-spec.md` §4.2.) A leading mode symbol (1 bit) says whether one adaptive model is
//! shared by all tensors (learning amortised) or restarted for every tensor (better when large
//! tensors differ); the encoder tries both and keeps the shorter stream. Everything is
//! integer-only, so the output is bit-exact on every machine.
//!
//! Rate estimates ([`estimate_bits`]) run the real encoder and count its output, so they are
//! exact by construction (one code path, see conventions §7).

use crate::arm::{Arm, ArmOut};
use constriction::stream::model::{DecoderModel, EncoderModel, EntropyModel};
use constriction::stream::queue::{DefaultRangeDecoder, DefaultRangeEncoder};
use constriction::stream::{Decode, Encode};
use constriction::UnwrapInfallible;
use std::borrow::Borrow;
use std::num::NonZeroU32;

/// Fixed-point precision of the probabilities handed to the range coder (§5.3): 24 bits.
pub const PRECISION: usize = 24;
/// Largest supported `max_abs` (alphabet `2 * max_abs + 1 <= 65535` symbols, i.e. 16-bit
/// quantization).
pub const MAX_ABS_LIMIT: u32 = 32767;
/// Initial count of every symbol of the alphabet (§5.2).
pub const COUNT_INIT: u32 = 1;
/// Count increment after a symbol is coded (§5.2). Tuned on i.i.d. uniform, Gaussian and
/// Laplace symbols (6..10 bits, 2k..40k symbols): 8 and a limit of 2^17 gave the lowest mean
/// overhead over the empirical entropy (see the ignored `tune` test).
pub const COUNT_INC: u32 = 8;
/// When the total count exceeds this bound, all counts are halved (rounding up) (§5.2).
pub const COUNT_LIMIT: u32 = 1 << 17;

// Correctness needs `cumulative * (2^24 - k)` to fit in u64 (it does by a wide margin). Speed
// needs the limit well above the largest alphabet (65535 symbols at count 1), so that halving
// (O(k)) stays rare: after a halving the total is about (limit + k) / 2.
const _: () = assert!(COUNT_LIMIT >= 2 * (2 * MAX_ABS_LIMIT + 1) * COUNT_INIT);
const _: () = assert!(COUNT_LIMIT as u64 * (1u64 << PRECISION) < u64::MAX / 2);

/// Errors of the entropy layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntropyError {
    /// `max_abs` is outside the supported range.
    #[error("unsupported symbol range max_abs = {max_abs} (expected 0..={MAX_ABS_LIMIT})")]
    MaxAbsTooLarge { max_abs: u32 },
    /// A symbol to encode lies outside `-max_abs..=max_abs`.
    #[error(
        "symbol {value} at tensor {tensor}, index {index} is out of range \
         (expected -{max_abs}..={max_abs})"
    )]
    SymbolOutOfRange {
        tensor: usize,
        index: usize,
        value: i32,
        max_abs: u32,
    },
    /// The compressed stream is not a whole number of 32-bit words.
    #[error("entropy payload of {len} bytes is not a multiple of 4 (expected whole 32-bit words)")]
    Misaligned { len: usize },
    /// The range decoder reported invalid compressed data.
    #[error("corrupt entropy payload: the range decoder rejected the data at symbol {at}")]
    InvalidData { at: usize },
    /// Decoding finished but the stream was not consumed exactly.
    #[error(
        "corrupt entropy payload: {words} words of compressed data were not consumed exactly \
         by decoding {symbols} symbols (expected the stream to end exactly there)"
    )]
    NotExhausted { words: usize, symbols: usize },
    /// The payload decodes, but is not the exact stream the encoder produces for those symbols.
    #[error(
        "corrupt entropy payload: the {words}-word stream is not the canonical encoding of the \
         symbols it decodes to (expected exactly the encoder's output)"
    )]
    NotCanonical { words: usize },
    /// With `max_abs == 0` every symbol is 0 and the payload must be empty.
    #[error("entropy payload of {len} bytes for an all-zero alphabet (expected 0 bytes)")]
    NonEmptyDegenerate { len: usize },
    /// The range encoder failed (should not happen with a valid model; reported, not panicked).
    #[error("range encoder failed: {0}")]
    Encoder(String),
}

/// Adaptive integer frequency model over the alphabet `0..k` (symbol `v` maps to `v + max_abs`).
///
/// Counts live in a Fenwick tree so lookups, updates and the decoder's quantile search are
/// O(log k). The fixed-point mapping (§5.3) is `cf(u) = u + floor(C(u) * (2^24 - k) / T)`,
/// where `C(u)` is the sum of the counts of symbols `< u` and `T` the total count.
#[derive(Debug, Clone)]
struct AdaptiveModel {
    counts: Vec<u32>,
    /// Fenwick tree, 1-based: `tree[i]` holds the sum of `counts[i - lowbit(i) .. i]`.
    tree: Vec<u64>,
    total: u64,
    /// `2^24 - k`, the probability mass shared out in proportion to the counts.
    free: u64,
    /// Highest power of two `<= k` (Fenwick descent start).
    top_bit: usize,
    params: ModelParams,
}

/// Tunable constants of the model; the format fixes them to [`COUNT_INIT`], [`COUNT_INC`],
/// [`COUNT_LIMIT`] (other values exist only for the tuning experiment in the tests).
#[derive(Debug, Clone, Copy)]
struct ModelParams {
    init: u32,
    inc: u32,
    limit: u32,
}

const FORMAT_PARAMS: ModelParams = ModelParams {
    init: COUNT_INIT,
    inc: COUNT_INC,
    limit: COUNT_LIMIT,
};

impl AdaptiveModel {
    /// `k` must be in `2..=2*MAX_ABS_LIMIT+1` (checked by callers).
    fn new(k: usize, params: ModelParams) -> Self {
        let counts = vec![params.init; k];
        let mut top_bit = 1usize;
        while top_bit * 2 <= k {
            top_bit *= 2;
        }
        let mut m = AdaptiveModel {
            counts,
            tree: vec![0; k + 1],
            total: 0,
            free: (1u64 << PRECISION) - k as u64,
            top_bit,
            params,
        };
        m.rebuild();
        m
    }

    /// A model whose counts start at `counts` (`2..=2*MAX_ABS_LIMIT+1` of them, each at least
    /// 1, their total at most [`COUNT_LIMIT`]; checked by callers) instead of `params.init`.
    fn with_counts(counts: Vec<u32>, params: ModelParams) -> Self {
        let mut m = AdaptiveModel::new(counts.len(), params);
        m.counts = counts;
        m.rebuild();
        m
    }

    /// Rebuilds the Fenwick tree and the total from `counts` in O(k).
    fn rebuild(&mut self) {
        let k = self.counts.len();
        self.tree.iter_mut().for_each(|t| *t = 0);
        let mut total = 0u64;
        for i in 1..=k {
            let c = u64::from(self.counts[i - 1]);
            total += c;
            self.tree[i] += c;
            let parent = i + (i & i.wrapping_neg());
            if parent <= k {
                let v = self.tree[i];
                self.tree[parent] += v;
            }
        }
        self.total = total;
    }

    /// `C(u)`: sum of counts of symbols `< u`.
    fn prefix(&self, u: usize) -> u64 {
        let mut i = u;
        let mut s = 0u64;
        while i > 0 {
            s += self.tree[i];
            i &= i - 1;
        }
        s
    }

    /// Fixed-point left cumulative for a symbol with count-prefix `c` and index `u`.
    #[inline]
    fn cf(&self, u: usize, c: u64) -> u64 {
        u as u64 + c * self.free / self.total
    }

    /// Left cumulative and probability of symbol `u` (always `< 2^24`, nonzero; k >= 2).
    fn lookup(&self, u: usize) -> (u32, NonZeroU32) {
        let c = self.prefix(u);
        let lo = self.cf(u, c);
        let hi = self.cf(u + 1, c + u64::from(self.counts[u]));
        // hi - lo >= 1 because the `u` term grows by one and the floor term never decreases.
        let p = NonZeroU32::new((hi - lo) as u32).unwrap_or(NonZeroU32::MIN);
        (lo as u32, p)
    }

    /// Finds `u` with `cf(u) <= q < cf(u + 1)` by Fenwick descent (`q < 2^24`).
    fn search(&self, q: u64) -> (usize, u32, NonZeroU32) {
        let k = self.counts.len();
        let mut pos = 0usize;
        let mut acc = 0u64;
        let mut step = self.top_bit;
        while step > 0 {
            let next = pos + step;
            if next <= k {
                let c = acc + self.tree[next];
                // cf(next) <= q  <=>  next <= q && floor(c * free / T) <= q - next
                //                <=>  next <= q && c * free < (q - next + 1) * T
                // (no division; both products < 2^42).
                if next as u64 <= q && c * self.free < (q - next as u64 + 1) * self.total {
                    pos = next;
                    acc = c;
                }
            }
            step >>= 1;
        }
        // cf(k) = 2^24 > q, so pos < k; guard anyway so hostile input can never index out.
        let u = pos.min(k - 1);
        let c = if u == pos { acc } else { self.prefix(u) };
        let lo = self.cf(u, c);
        let hi = self.cf(u + 1, c + u64::from(self.counts[u]));
        let p = NonZeroU32::new((hi.saturating_sub(lo)) as u32).unwrap_or(NonZeroU32::MIN);
        (u, lo as u32, p)
    }

    /// Adds `inc` to the count of `u`; halves all counts when the total exceeds `limit`.
    fn update(&mut self, u: usize) {
        let inc = self.params.inc;
        self.counts[u] += inc;
        self.total += u64::from(inc);
        let k = self.counts.len();
        let mut i = u + 1;
        while i <= k {
            self.tree[i] += u64::from(inc);
            i += i & i.wrapping_neg();
        }
        if self.total > u64::from(self.params.limit) {
            self.counts.iter_mut().for_each(|c| *c = c.div_ceil(2));
            self.rebuild();
        }
    }
}

/// The models a residual stream (§5.10, §5.11) starts every grid with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelSet {
    /// This many models, every count at [`COUNT_INIT`] (§5.2).
    Flat(usize),
    /// The [`ARM_PRIOR_MODELS`] models of §5.11.1, from Laplace prior counts.
    ArmPrior,
}

impl ModelSet {
    fn len(self) -> usize {
        match self {
            ModelSet::Flat(n) => n,
            ModelSet::ArmPrior => ARM_PRIOR_MODELS,
        }
    }

    /// Model `j` (`< len`) of a grid whose residuals lie in `-res_max_abs..=res_max_abs`.
    fn model(self, j: usize, res_max_abs: u32) -> AdaptiveModel {
        let k = 2 * res_max_abs as usize + 1;
        match self {
            ModelSet::Flat(_) => AdaptiveModel::new(k, FORMAT_PARAMS),
            ModelSet::ArmPrior => AdaptiveModel::with_counts(
                arm_prior_counts(j, res_max_abs),
                ModelParams {
                    inc: ARM_PRIOR_INC,
                    ..FORMAT_PARAMS
                },
            ),
        }
    }
}

/// A grid's models, each made when its first element is coded (a grid codes a few of its
/// models at most when it is small; a hostile file cannot make the decoder build models that
/// no element uses).
struct LazyModels {
    set: ModelSet,
    res_max_abs: u32,
    models: Vec<Option<AdaptiveModel>>,
}

impl LazyModels {
    fn new(set: ModelSet, res_max_abs: u32) -> Self {
        LazyModels {
            set,
            res_max_abs,
            models: (0..set.len()).map(|_| None).collect(),
        }
    }

    /// Model `j`; `None` when `j` is out of range (never, for the indices the planners give).
    fn get(&mut self, j: usize) -> Option<&mut AdaptiveModel> {
        let (set, r) = (self.set, self.res_max_abs);
        Some(
            self.models
                .get_mut(j)?
                .get_or_insert_with(|| set.model(j, r)),
        )
    }
}

/// §5.11.1 Scale contexts of the prior models: ln b from −3 in steps of 1/4.
pub const ARM_PRIOR_SCALE_CONTEXTS: usize = 24;
/// §5.11.1 Fraction classes of the prior models: |f| / 256 in steps of 1/12.
pub const ARM_PRIOR_FRACTION_CLASSES: usize = 6;
/// §5.11.1 Models of one grid with prior counts.
pub const ARM_PRIOR_MODELS: usize = ARM_PRIOR_SCALE_CONTEXTS * ARM_PRIOR_FRACTION_CLASSES;
/// §5.11.1 Count increment of the prior models (the §5.2 limit and halving are unchanged).
pub const ARM_PRIOR_INC: u32 = 32;
/// §5.11.1 Widest residual of a file with prior models (bit width, so residuals lie in
/// `−2047..=2047`): keeps a grid's 144 models small (at most 4,095 counts each).
pub const ARM_PRIOR_MAX_RES_BITS: u8 = 12;
/// The residual range of [`ARM_PRIOR_MAX_RES_BITS`].
const ARM_PRIOR_MAX_RES: u32 = (1 << (ARM_PRIOR_MAX_RES_BITS - 1)) - 1;

/// §5.11.1 The prior of model `(s, c)`: `(Q, [(A, B, C); 6])` for scale context `s`: the tail
/// ratio `Q` (units of 2^−16) and, per fraction class `c`, the counts added at residuals 0, 1
/// and −1. From `scripts/arm_prior_table.py`: 2048 times the unit-cell masses of a Laplace of
/// scale `exp(−3 + (s + 1/2) / 4)` and mean `(2c + 1) / 24`, `Q = exp(−1 / scale)` (normative
/// as printed here and in the spec, not as computed).
#[rustfmt::skip]
const ARM_PRIOR_TABLE: [(u32, [[u32; 3]; ARM_PRIOR_FRACTION_CLASSES]); ARM_PRIOR_SCALE_CONTEXTS] = [
    (0, [[2048, 0, 0], [2047, 1, 0], [2042, 6, 0], [2022, 25, 0], [1936, 112, 0], [1559, 489, 0]]), // s = 0
    (0, [[2046, 2, 1], [2042, 6, 0], [2030, 18, 0], [1990, 58, 0], [1866, 182, 0], [1472, 576, 0]]), // s = 1
    (1, [[2038, 7, 3], [2029, 18, 1], [2003, 45, 1], [1939, 109, 0], [1781, 267, 0], [1394, 654, 0]]), // s = 2
    (15, [[2015, 22, 11], [1998, 44, 5], [1956, 89, 3], [1868, 179, 1], [1688, 359, 1], [1325, 722, 0]]), // s = 3
    (96, [[1966, 51, 30], [1942, 89, 17], [1885, 153, 10], [1779, 263, 6], [1591, 453, 3], [1266, 779, 2]]), // s = 4
    (408, [[1883, 99, 65], [1853, 152, 43], [1787, 231, 28], [1674, 353, 18], [1493, 539, 12], [1211, 824, 8]]), // s = 5
    (1255, [[1761, 164, 118], [1729, 228, 85], [1663, 317, 61], [1554, 441, 44], [1391, 613, 32], [1156, 852, 23]]), // s = 6
    (3011, [[1605, 238, 184], [1576, 308, 142], [1515, 398, 110], [1420, 514, 85], [1282, 665, 66], [1094, 859, 51]]), // s = 7
    (5952, [[1428, 310, 254], [1403, 379, 208], [1352, 462, 170], [1273, 565, 139], [1164, 690, 114], [1019, 842, 93]]), // s = 8
    (10118, [[1241, 368, 315], [1221, 430, 269], [1182, 502, 231], [1121, 587, 197], [1038, 686, 169], [930, 801, 145]]), // s = 9
    (15296, [[1057, 403, 357], [1042, 455, 316], [1013, 514, 280], [968, 580, 248], [908, 654, 220], [830, 739, 195]]), // s = 10
    (21104, [[885, 413, 376], [874, 454, 342], [853, 499, 311], [822, 548, 283], [779, 603, 258], [726, 662, 234]]), // s = 11
    (27115, [[730, 401, 372], [723, 431, 346], [708, 464, 321], [687, 500, 299], [658, 538, 277], [621, 579, 258]]), // s = 12
    (32961, [[595, 371, 351], [590, 393, 331], [581, 417, 313], [566, 441, 295], [547, 467, 279], [523, 495, 263]]), // s = 13
    (38372, [[481, 332, 318], [477, 347, 304], [471, 363, 291], [462, 380, 278], [449, 397, 266], [433, 415, 254]]), // s = 14
    (43196, [[385, 288, 279], [383, 299, 269], [379, 309, 260], [373, 320, 251], [365, 331, 242], [355, 343, 234]]), // s = 15
    (47368, [[307, 245, 238], [305, 251, 232], [303, 258, 226], [299, 265, 220], [294, 273, 214], [288, 280, 208]]), // s = 16
    (50895, [[243, 204, 199], [242, 208, 195], [241, 213, 191], [238, 217, 187], [235, 222, 183], [231, 226, 180]]), // s = 17
    (53822, [[192, 167, 165], [191, 170, 162], [190, 173, 159], [189, 176, 157], [187, 179, 154], [184, 182, 152]]), // s = 18
    (56218, [[151, 136, 134], [151, 137, 132], [150, 139, 131], [149, 141, 129], [148, 143, 127], [146, 145, 126]]), // s = 19
    (58158, [[119, 109, 108], [119, 110, 107], [118, 111, 106], [118, 112, 105], [117, 114, 104], [116, 115, 103]]), // s = 20
    (59715, [[93, 87, 86], [93, 88, 86], [93, 89, 85], [92, 89, 84], [92, 90, 84], [91, 91, 83]]), // s = 21
    (60956, [[73, 69, 69], [73, 70, 68], [73, 70, 68], [72, 70, 68], [72, 71, 67], [72, 71, 67]]), // s = 22
    (61941, [[57, 55, 54], [57, 55, 54], [57, 55, 54], [57, 56, 54], [57, 56, 53], [56, 56, 53]]), // s = 23
];

/// §5.11.1 The starting counts of prior model `j = 6 s + c` over the residuals
/// `−res_max_abs..=res_max_abs` (index `r + res_max_abs`): `1 + w(r)` with `w(0) = A`,
/// `w(1) = B`, `w(−1) = C` and `w(r ± 1) = floor(w(r) · Q / 2^16)` away from 0.
fn arm_prior_counts(j: usize, res_max_abs: u32) -> Vec<u32> {
    let (q, cells) =
        ARM_PRIOR_TABLE[(j / ARM_PRIOR_FRACTION_CLASSES).min(ARM_PRIOR_SCALE_CONTEXTS - 1)];
    let [a, b, c] = cells[j % ARM_PRIOR_FRACTION_CLASSES];
    let m = res_max_abs as usize;
    let mut counts = vec![1u32; 2 * m + 1];
    counts[m] += a;
    let tail = |counts: &mut [u32], first: u32, idx: &mut dyn Iterator<Item = usize>| {
        let mut w = first;
        for i in idx {
            if w == 0 {
                break;
            }
            counts[i] += w;
            w = ((u64::from(w) * u64::from(q)) >> 16) as u32;
        }
    };
    tail(&mut counts, b, &mut (m + 1..=2 * m));
    tail(&mut counts, c, &mut (0..m).rev());
    counts
}

/// Encoder-side view implementing constriction's model traits for one symbol.
struct View<'a>(&'a AdaptiveModel);

impl EntropyModel<PRECISION> for View<'_> {
    type Symbol = usize;
    type Probability = u32;
}

impl EncoderModel<PRECISION> for View<'_> {
    fn left_cumulative_and_probability(
        &self,
        symbol: impl Borrow<usize>,
    ) -> Option<(u32, NonZeroU32)> {
        let u = *symbol.borrow();
        (u < self.0.counts.len()).then(|| self.0.lookup(u))
    }
}

impl DecoderModel<PRECISION> for View<'_> {
    fn quantile_function(&self, quantile: u32) -> (usize, u32, NonZeroU32) {
        self.0.search(u64::from(quantile))
    }
}

fn check_max_abs(max_abs: u32) -> Result<(), EntropyError> {
    if max_abs > MAX_ABS_LIMIT {
        return Err(EntropyError::MaxAbsTooLarge { max_abs });
    }
    Ok(())
}

fn encode_with(
    tensors: &[&[i32]],
    max_abs: u32,
    params: ModelParams,
) -> Result<Vec<u8>, EntropyError> {
    check_max_abs(max_abs)?;
    // Range check first, for every alphabet (including the degenerate one).
    for (t, tensor) in tensors.iter().enumerate() {
        check_symbols(t, tensor, max_abs)?;
    }
    if max_abs == 0 || tensors.iter().all(|t| t.is_empty()) {
        return Ok(Vec::new()); // §5.1: nothing to code.
    }
    // §5.2: try both model modes, keep the shorter stream (ties: shared).
    let shared = encode_mode(tensors, max_abs, params, Mode::Shared)?;
    let reset = encode_mode(tensors, max_abs, params, Mode::ResetPerTensor)?;
    Ok(if reset.len() < shared.len() {
        reset
    } else {
        shared
    })
}

/// How the adaptive model is carried across tensors (§5.2); coded as the first stream symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One model for all tensors.
    Shared = 0,
    /// A fresh model at the start of every tensor.
    ResetPerTensor = 1,
}

/// Fixed uniform model over {0, 1} for the mode symbol (§5.2).
struct ModeModel;

impl EntropyModel<PRECISION> for ModeModel {
    type Symbol = usize;
    type Probability = u32;
}

const HALF: u32 = 1 << (PRECISION - 1);

impl EncoderModel<PRECISION> for ModeModel {
    fn left_cumulative_and_probability(
        &self,
        symbol: impl Borrow<usize>,
    ) -> Option<(u32, NonZeroU32)> {
        let u = *symbol.borrow();
        (u < 2).then_some((u as u32 * HALF, NonZeroU32::MIN.saturating_add(HALF - 1)))
    }
}

impl DecoderModel<PRECISION> for ModeModel {
    fn quantile_function(&self, quantile: u32) -> (usize, u32, NonZeroU32) {
        let u = usize::from(quantile >= HALF);
        (u, u as u32 * HALF, NonZeroU32::MIN.saturating_add(HALF - 1))
    }
}

/// Encodes with a given mode; symbols must already be range-checked and `max_abs >= 1`.
fn encode_mode(
    tensors: &[&[i32]],
    max_abs: u32,
    params: ModelParams,
    mode: Mode,
) -> Result<Vec<u8>, EntropyError> {
    let m = i64::from(max_abs);
    let k = 2 * max_abs as usize + 1;
    let coder_err = |e| EntropyError::Encoder(format!("{e:?}"));
    let mut enc = DefaultRangeEncoder::new();
    enc.encode_symbol(mode as usize, ModeModel)
        .map_err(coder_err)?;
    let mut model = AdaptiveModel::new(k, params);
    for (i, tensor) in tensors.iter().enumerate() {
        if mode == Mode::ResetPerTensor && i > 0 {
            model = AdaptiveModel::new(k, params);
        }
        for &v in tensor.iter() {
            // In range (checked by the caller), so the index is in 0..k.
            let u = (i64::from(v) + m) as usize;
            enc.encode_symbol(u, View(&model)).map_err(coder_err)?;
            model.update(u);
        }
    }
    Ok(stream_bytes(enc))
}

fn decode_with(
    bytes: &[u8],
    lens: &[usize],
    max_abs: u32,
    params: ModelParams,
) -> Result<Vec<Vec<i32>>, EntropyError> {
    check_max_abs(max_abs)?;
    if !bytes.len().is_multiple_of(4) {
        return Err(EntropyError::Misaligned { len: bytes.len() });
    }
    // Cap pre-allocation: `lens` should be validated by the caller, but never trust it blindly.
    const PREALLOC_CAP: usize = 1 << 20;
    if max_abs == 0 {
        if !bytes.is_empty() {
            return Err(EntropyError::NonEmptyDegenerate { len: bytes.len() });
        }
        return Ok(lens.iter().map(|&n| vec![0; n]).collect());
    }
    let words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(<[u8; 4]>::try_from(c).unwrap_or_default()))
        .collect();
    let num_words = words.len();
    let k = 2 * max_abs as usize + 1;
    let m = i64::from(max_abs);
    let total: usize = lens.iter().fold(0usize, |a, &n| a.saturating_add(n));
    if total == 0 {
        if !bytes.is_empty() {
            return Err(EntropyError::NotExhausted {
                words: bytes.len() / 4,
                symbols: 0,
            });
        }
        return Ok(lens.iter().map(|_| Vec::new()).collect());
    }
    let mut dec = DefaultRangeDecoder::from_compressed(words).unwrap_infallible();
    let mode = match dec.decode_symbol(ModeModel) {
        Ok(0) => Mode::Shared,
        Ok(_) => Mode::ResetPerTensor,
        Err(_) => return Err(EntropyError::InvalidData { at: 0 }),
    };
    let mut model = AdaptiveModel::new(k, params);
    let mut out = Vec::with_capacity(lens.len().min(PREALLOC_CAP));
    let mut at = 0usize;
    for (i, &n) in lens.iter().enumerate() {
        if mode == Mode::ResetPerTensor && i > 0 {
            model = AdaptiveModel::new(k, params);
        }
        let mut tensor = Vec::with_capacity(n.min(PREALLOC_CAP));
        for _ in 0..n {
            let u = dec
                .decode_symbol(View(&model))
                .map_err(|_| EntropyError::InvalidData { at })?;
            model.update(u);
            // u < k <= 65535, so the value fits easily.
            tensor.push((u as i64 - m) as i32);
            at += 1;
        }
        out.push(tensor);
    }
    if !dec.maybe_exhausted() {
        return Err(EntropyError::NotExhausted {
            words: num_words,
            symbols: at,
        });
    }
    // Canonical-stream check (§5.5): the encoder is deterministic, so re-encoding the decoded
    // symbols with the decoded mode must reproduce the payload exactly. This rejects every
    // stream the encoder could not have written (e.g. padded or altered tail words).
    let refs: Vec<&[i32]> = out.iter().map(|t| t.as_slice()).collect();
    if encode_mode(&refs, max_abs, params, mode)? != bytes {
        return Err(EntropyError::NotCanonical { words: num_words });
    }
    Ok(out)
}

/// Encodes `tensors` (concatenated in order) into one range-coded stream (`codec-spec.md` §5).
///
/// Every symbol must lie in `-max_abs..=max_abs`. Both model modes (shared, per tensor; §5.2)
/// are encoded and the shorter stream is returned (cost: two encodes). The output is a whole
/// number of 32-bit little-endian words; it is empty when no symbol is coded (no tensors, only
/// empty tensors, or `max_abs == 0`).
///
/// # Errors
/// [`EntropyError::MaxAbsTooLarge`] if `max_abs > MAX_ABS_LIMIT`,
/// [`EntropyError::SymbolOutOfRange`] for a symbol outside the range.
///
/// # Panics
/// Never.
pub fn encode_tensors(tensors: &[&[i32]], max_abs: u32) -> Result<Vec<u8>, EntropyError> {
    encode_with(tensors, max_abs, FORMAT_PARAMS)
}

/// Decodes the stream written by [`encode_tensors`]: `lens[i]` symbols for tensor `i`.
///
/// The caller must bound `sum(lens)` (decoding time and output memory are linear in it); the
/// container checks it against [`crate::format::Limits`] first. Any byte string decodes
/// without panicking; corruption is detected when the stream is not consumed exactly (a
/// CRC in the container catches the rest).
///
/// # Errors
/// [`EntropyError::Misaligned`], [`EntropyError::InvalidData`], [`EntropyError::NotExhausted`],
/// [`EntropyError::NonEmptyDegenerate`], [`EntropyError::MaxAbsTooLarge`].
///
/// # Panics
/// Never.
pub fn decode_tensors(
    bytes: &[u8],
    lens: &[usize],
    max_abs: u32,
) -> Result<Vec<Vec<i32>>, EntropyError> {
    decode_with(bytes, lens, max_abs, FORMAT_PARAMS)
}

/// Exact size in bits of the output of [`encode_tensors`] for the same arguments (it runs the
/// same encoder and returns `8 * bytes.len()`; always a multiple of 32).
///
/// # Errors
/// As [`encode_tensors`].
///
/// # Panics
/// Never.
pub fn estimate_bits(tensors: &[&[i32]], max_abs: u32) -> Result<u64, EntropyError> {
    Ok(8 * encode_tensors(tensors, max_abs)?.len() as u64)
}

// ---------------------------------------------------------------------------------------------
// Sparsity masks (`codec-spec.md` §5.8): binary significance maps with 4 adaptive contexts.
// ---------------------------------------------------------------------------------------------

/// Number of binary contexts of the mask coder: `left + 2 * above` (§5.8).
pub const MASK_CONTEXTS: usize = 4;

/// Shape of one mask for the mask coder: `len` flags stored row-major in rows of `cols`
/// (the tensor's output size; §5.8 uses it only to find the element above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskShape {
    pub len: usize,
    pub cols: usize,
}

/// §5.8 context of element `i`: bit 0 = the flag to the left in the same row (1 at the row
/// start), bit 1 = the flag in the row above (1 in the first row).
#[inline]
fn mask_context(mask: &[bool], i: usize, cols: usize) -> usize {
    let left = if cols == 0 || i.is_multiple_of(cols) {
        true
    } else {
        mask.get(i - 1).copied().unwrap_or(true)
    };
    let above = if cols == 0 || i < cols {
        true
    } else {
        mask.get(i - cols).copied().unwrap_or(true)
    };
    usize::from(left) + 2 * usize::from(above)
}

fn fresh_mask_models() -> [AdaptiveModel; MASK_CONTEXTS] {
    std::array::from_fn(|_| AdaptiveModel::new(2, FORMAT_PARAMS))
}

/// The 32-bit words of a stream that must code `total` symbols (§5.4, §5.5): `None` for an
/// empty stream with nothing to code.
///
/// # Errors
/// [`EntropyError::Misaligned`] for a partial word, [`EntropyError::NotExhausted`] for words
/// when nothing is to be coded.
fn stream_words(bytes: &[u8], total: usize) -> Result<Option<Vec<u32>>, EntropyError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(EntropyError::Misaligned { len: bytes.len() });
    }
    if total == 0 {
        if !bytes.is_empty() {
            return Err(EntropyError::NotExhausted {
                words: bytes.len() / 4,
                symbols: 0,
            });
        }
        return Ok(None);
    }
    Ok(Some(
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(<[u8; 4]>::try_from(c).unwrap_or_default()))
            .collect(),
    ))
}

/// Encodes masks (one range-coded stream, §5.8): for every mask in order, four fresh binary
/// adaptive models (§5.2 constants, `K = 2`, symbol 1 = kept); each flag in storage order is
/// coded under the model of its context ([`MASK_CONTEXTS`]). No mode symbol. Empty input (or
/// only empty masks) gives an empty stream.
///
/// # Errors
/// [`EntropyError::Encoder`] only if the range coder fails (it does not with these models).
///
/// # Panics
/// Never.
pub fn encode_masks(masks: &[(&[bool], usize)]) -> Result<Vec<u8>, EntropyError> {
    if masks.iter().all(|(m, _)| m.is_empty()) {
        return Ok(Vec::new());
    }
    let coder_err = |e| EntropyError::Encoder(format!("{e:?}"));
    let mut enc = DefaultRangeEncoder::new();
    for &(mask, cols) in masks {
        let mut models = fresh_mask_models();
        for (i, &bit) in mask.iter().enumerate() {
            let ctx = mask_context(mask, i, cols);
            let u = usize::from(bit);
            let model = &mut models[ctx];
            enc.encode_symbol(u, View(model)).map_err(coder_err)?;
            model.update(u);
        }
    }
    Ok(stream_bytes(enc))
}

/// Decodes the stream of [`encode_masks`] for masks of the given shapes, with the checks of
/// §5.5 (whole words, exhausted stream, canonical re-encoding).
///
/// The caller must bound `sum(len)` (the container checks it against the parameter limit).
///
/// # Errors
/// [`EntropyError::Misaligned`], [`EntropyError::InvalidData`], [`EntropyError::NotExhausted`],
/// [`EntropyError::NotCanonical`].
///
/// # Panics
/// Never, for any input.
pub fn decode_masks(bytes: &[u8], shapes: &[MaskShape]) -> Result<Vec<Vec<bool>>, EntropyError> {
    const PREALLOC_CAP: usize = 1 << 20;
    let total: usize = shapes.iter().fold(0usize, |a, s| a.saturating_add(s.len));
    let Some(words) = stream_words(bytes, total)? else {
        return Ok(shapes.iter().map(|_| Vec::new()).collect());
    };
    let num_words = words.len();
    let mut dec = DefaultRangeDecoder::from_compressed(words).unwrap_infallible();
    let mut out = Vec::with_capacity(shapes.len().min(PREALLOC_CAP));
    let mut at = 0usize;
    for s in shapes {
        let mut models = fresh_mask_models();
        let mut mask = Vec::with_capacity(s.len.min(PREALLOC_CAP));
        for i in 0..s.len {
            let ctx = mask_context(&mask, i, s.cols);
            let model = &mut models[ctx];
            let u = dec
                .decode_symbol(View(model))
                .map_err(|_| EntropyError::InvalidData { at })?;
            model.update(u);
            mask.push(u == 1);
            at += 1;
        }
        out.push(mask);
    }
    if !dec.maybe_exhausted() {
        return Err(EntropyError::NotExhausted {
            words: num_words,
            symbols: at,
        });
    }
    let refs: Vec<(&[bool], usize)> = out
        .iter()
        .zip(shapes)
        .map(|(m, s)| (m.as_slice(), s.cols))
        .collect();
    if encode_masks(&refs)? != bytes {
        return Err(EntropyError::NotCanonical { words: num_words });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Latent grids (`codec-spec.md` §5.9): 2-D integer grids with 5 or 12 adaptive contexts each.
// ---------------------------------------------------------------------------------------------

/// The context sets of the latent-grid coders (§5.9): how the neighbour sum `s` picks a
/// model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum GridContexts {
    /// Five contexts (grid files without flag bit 8, audio grid files).
    Five,
    /// Twelve contexts (image grid files with flag bit 8).
    Twelve,
    /// Twelve contexts, each split in three by the fractional part of the prediction
    /// (§5.10, image grid files with flag bits 6, 8 and 11): 36 models per grid in a
    /// predicted stream. A plain stream (§5.9) has no prediction and never uses this set.
    TwelveSplit,
    /// Five contexts split the same way (§5.10, audio grid segments with segment flag bit 1):
    /// 15 models per grid in a predicted stream.
    FiveSplit,
}

/// Most contexts of any [`GridContexts`] set.
pub const MAX_GRID_CONTEXTS: usize = 12;

impl GridContexts {
    /// The number of neighbour contexts (§5.9; the models per grid of a plain stream).
    pub const fn count(self) -> usize {
        match self {
            GridContexts::Five | GridContexts::FiveSplit => 5,
            GridContexts::Twelve | GridContexts::TwelveSplit => 12,
        }
    }

    /// Models per grid of a predicted stream (§5.10): [`GridContexts::count`], times
    /// [`FRACTION_CLASSES`] with the fractional split.
    pub const fn pred_models(self) -> usize {
        if self.splits_fraction() {
            self.count() * FRACTION_CLASSES
        } else {
            self.count()
        }
    }

    /// The set with the fractional split of a predicted stream.
    pub const fn split(self) -> GridContexts {
        match self {
            GridContexts::Twelve | GridContexts::TwelveSplit => GridContexts::TwelveSplit,
            GridContexts::Five | GridContexts::FiveSplit => GridContexts::FiveSplit,
        }
    }

    /// The set without the fractional split (the neighbour contexts alone).
    pub const fn unsplit(self) -> GridContexts {
        match self {
            GridContexts::Twelve | GridContexts::TwelveSplit => GridContexts::Twelve,
            GridContexts::Five | GridContexts::FiveSplit => GridContexts::Five,
        }
    }

    /// Whether a predicted stream splits each context by the prediction's fractional part.
    pub const fn splits_fraction(self) -> bool {
        matches!(self, GridContexts::TwelveSplit | GridContexts::FiveSplit)
    }

    /// The context of the neighbour sum `s = 2|L| + 2|A| + |AL| + |AR|` (§5.9).
    #[inline]
    pub fn bucket(self, s: u32) -> usize {
        match self {
            GridContexts::Five | GridContexts::FiveSplit => grid_context_bucket(s),
            GridContexts::Twelve | GridContexts::TwelveSplit => match s {
                0..=4 => s as usize,
                5..=6 => 5,
                7..=8 => 6,
                9..=11 => 7,
                12..=15 => 8,
                16..=21 => 9,
                22..=30 => 10,
                _ => 11,
            },
        }
    }
}

/// Shape of one latent grid for the grid coder: `len` symbols in rows of `cols`, each in
/// `-max_abs..=max_abs` (`1 <= max_abs <= MAX_ABS_LIMIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridShape {
    pub len: usize,
    pub cols: usize,
    pub max_abs: u32,
}

/// §5.9 context of element `i` of a grid with `cols` columns whose first `i` elements are
/// `g[..i]`: from the magnitudes of the left, above, above-left and above-right neighbours
/// (0 outside the grid), `s = 2|L| + 2|A| + |AL| + |AR|`, bucketed by `ctxs`.
#[inline]
fn grid_context(g: &[i32], i: usize, cols: usize, ctxs: GridContexts) -> usize {
    let at = |j: Option<usize>| -> u32 { j.and_then(|j| g.get(j)).map_or(0, |v| v.unsigned_abs()) };
    let x = if cols == 0 { 0 } else { i % cols };
    let left = (x > 0).then(|| i - 1);
    let up = (cols > 0 && i >= cols).then(|| i - cols);
    let up_left = up.filter(|_| x > 0).map(|j| j - 1);
    let up_right = up.filter(|_| x + 1 < cols).map(|j| j + 1);
    let s = 2 * u64::from(at(left))
        + 2 * u64::from(at(up))
        + u64::from(at(up_left))
        + u64::from(at(up_right));
    ctxs.bucket(s.min(u64::from(u32::MAX)) as u32)
}

/// §5.9 context of the neighbour sum `s = 2|L| + 2|A| + |AL| + |AR|`:
/// 0 | 1..=2 | 3..=5 | 6..=10 | more. (The grid encoder's rate model uses it too.)
#[inline]
pub fn grid_context_bucket(s: u32) -> usize {
    match s {
        0 => 0,
        1..=2 => 1,
        3..=5 => 2,
        6..=10 => 3,
        _ => 4,
    }
}

/// [`EntropyError::SymbolOutOfRange`] for the first value of `g` (tensor `t`) outside
/// `-max_abs..=max_abs`.
fn check_symbols(t: usize, g: &[i32], max_abs: u32) -> Result<(), EntropyError> {
    let m = i64::from(max_abs);
    match g.iter().enumerate().find(|(_, &v)| i64::from(v).abs() > m) {
        Some((index, &value)) => Err(EntropyError::SymbolOutOfRange {
            tensor: t,
            index,
            value,
            max_abs,
        }),
        None => Ok(()),
    }
}

fn check_grid_shape(s: &GridShape) -> Result<(), EntropyError> {
    if s.max_abs == 0 || s.max_abs > MAX_ABS_LIMIT {
        return Err(EntropyError::MaxAbsTooLarge { max_abs: s.max_abs });
    }
    Ok(())
}

/// Encodes latent grids into one range-coded stream (§5.9): for every grid in order,
/// `ctxs.count()` fresh adaptive models (§5.2 constants) over its alphabet; each symbol
/// in row-major order is coded under the model of its context. No mode symbol. Only empty
/// grids give an empty stream.
///
/// # Errors
/// [`EntropyError::MaxAbsTooLarge`] for a `max_abs` outside `1..=MAX_ABS_LIMIT`,
/// [`EntropyError::SymbolOutOfRange`] for a symbol outside its grid's range.
///
/// # Panics
/// Never.
pub fn encode_grids(
    grids: &[(&[i32], GridShape)],
    ctxs: GridContexts,
) -> Result<Vec<u8>, EntropyError> {
    for (t, &(g, s)) in grids.iter().enumerate() {
        check_grid_shape(&s)?;
        check_symbols(t, g, s.max_abs)?;
    }
    if grids.iter().all(|(g, _)| g.is_empty()) {
        return Ok(Vec::new());
    }
    let coder_err = |e| EntropyError::Encoder(format!("{e:?}"));
    let mut enc = DefaultRangeEncoder::new();
    for &(g, s) in grids {
        let k = 2 * s.max_abs as usize + 1;
        let m = i64::from(s.max_abs);
        let mut models: Vec<AdaptiveModel> = (0..ctxs.count())
            .map(|_| AdaptiveModel::new(k, FORMAT_PARAMS))
            .collect();
        for (i, &v) in g.iter().enumerate() {
            let model = &mut models[grid_context(g, i, s.cols, ctxs)];
            let u = (i64::from(v) + m) as usize; // in 0..k, checked above
            enc.encode_symbol(u, View(model)).map_err(coder_err)?;
            model.update(u);
        }
    }
    Ok(stream_bytes(enc))
}

/// Decodes the stream of [`encode_grids`] for grids of the given shapes, with the checks of
/// §5.5 (whole words, exhausted stream, canonical re-encoding).
///
/// The caller must bound `sum(len)` (the container checks it against the parameter limit).
///
/// # Errors
/// [`EntropyError::Misaligned`], [`EntropyError::InvalidData`], [`EntropyError::NotExhausted`],
/// [`EntropyError::NotCanonical`], [`EntropyError::MaxAbsTooLarge`].
///
/// # Panics
/// Never, for any input.
pub fn decode_grids(
    bytes: &[u8],
    shapes: &[GridShape],
    ctxs: GridContexts,
) -> Result<Vec<Vec<i32>>, EntropyError> {
    const PREALLOC_CAP: usize = 1 << 20;
    for s in shapes {
        check_grid_shape(s)?;
    }
    let total: usize = shapes.iter().fold(0usize, |a, s| a.saturating_add(s.len));
    let Some(words) = stream_words(bytes, total)? else {
        return Ok(shapes.iter().map(|_| Vec::new()).collect());
    };
    let num_words = words.len();
    let mut dec = DefaultRangeDecoder::from_compressed(words).unwrap_infallible();
    let mut out = Vec::with_capacity(shapes.len().min(PREALLOC_CAP));
    let mut at = 0usize;
    for s in shapes {
        let k = 2 * s.max_abs as usize + 1;
        let m = i64::from(s.max_abs);
        let mut models: Vec<AdaptiveModel> = (0..ctxs.count())
            .map(|_| AdaptiveModel::new(k, FORMAT_PARAMS))
            .collect();
        let mut g = Vec::with_capacity(s.len.min(PREALLOC_CAP));
        for i in 0..s.len {
            let model = &mut models[grid_context(&g, i, s.cols, ctxs)];
            let u = dec
                .decode_symbol(View(model))
                .map_err(|_| EntropyError::InvalidData { at })?;
            model.update(u);
            g.push((u as i64 - m) as i32); // u < k <= 65535
            at += 1;
        }
        out.push(g);
    }
    if !dec.maybe_exhausted() {
        return Err(EntropyError::NotExhausted {
            words: num_words,
            symbols: at,
        });
    }
    let refs: Vec<(&[i32], GridShape)> = out
        .iter()
        .map(|g| g.as_slice())
        .zip(shapes.iter().copied())
        .collect();
    if encode_grids(&refs, ctxs)? != bytes {
        return Err(EntropyError::NotCanonical { words: num_words });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Predicted latent grids (`codec-spec.md` §5.10): the §5.9 coder on prediction residuals.
// ---------------------------------------------------------------------------------------------

/// Taps of the latent predictor (§5.10): left, above, above-left, above-right, parent.
pub const GRID_PRED_TAPS: usize = 5;
/// Fixed-point shift of the predictor coefficients (§5.10): a coefficient `c` weighs its tap by
/// `c / 2^GRID_PRED_SHIFT`.
pub const GRID_PRED_SHIFT: u32 = 8;

/// One grid of a predicted stream (§5.10): `len` values in rows of `cols`, each in
/// `-max_abs..=max_abs`, coded as residuals in `-res_max_abs..=res_max_abs` from the
/// prediction with `coefs`. Its parent is the previous grid of the list (none for the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PredShape {
    pub len: usize,
    pub cols: usize,
    pub max_abs: u32,
    pub res_max_abs: u32,
    pub coefs: [i16; GRID_PRED_TAPS],
}

/// §5.10 prediction of element `i` of grid `g` (its first `i` elements decoded) with `cols`
/// columns: `(c_L L + c_A A + c_AL AL + c_AR AR + c_P P + 2^(S-1)) >> S` in exact integer
/// arithmetic (floor shift), clamped to `-max_abs..=max_abs`. Neighbours outside the grid, and
/// the parent when there is none or its position `(x >> 1, y >> 1)` is outside it, are 0.
#[inline]
pub fn grid_prediction(
    g: &[i32],
    i: usize,
    cols: usize,
    parent: Option<(&[i32], usize)>,
    coefs: &[i16; GRID_PRED_TAPS],
    max_abs: u32,
) -> i32 {
    grid_prediction_parts(g, i, cols, parent, coefs, max_abs).0
}

/// §5.10 The parent of the element at column `x`, row `y`: element `(x >> 1, y >> 1)` of
/// `parent` (a grid and its columns), 0 when there is none or that position is outside it.
/// (The §5.11 ARM takes the same input.)
#[inline]
pub fn grid_parent(parent: Option<(&[i32], usize)>, x: usize, y: usize) -> i64 {
    parent.map_or(0, |(p, pcols)| {
        let (px, py) = (x >> 1, y >> 1);
        if px < pcols {
            py.checked_mul(pcols)
                .and_then(|r| r.checked_add(px))
                .and_then(|j| p.get(j))
                .map_or(0, |&v| i64::from(v))
        } else {
            0
        }
    })
}

/// Classes of the prediction's fractional part in a split predicted stream (§5.10).
pub const FRACTION_CLASSES: usize = 3;

/// §5.10 class of the prediction's fractional part `f = s - 256·pred` (in `-128..=127`; 0
/// when the prediction was clamped): 0 if `|f| < 32`, 1 if `32 <= |f| < 80`, else 2.
#[inline]
pub fn fraction_class(f: i64) -> usize {
    match f.unsigned_abs() {
        0..=31 => 0,
        32..=79 => 1,
        _ => 2,
    }
}

/// [`grid_prediction`] and the fractional part of the prediction before rounding, `f = s -
/// 256·pred` in `-128..=127` (0 when the prediction is clamped).
#[inline]
pub fn grid_prediction_parts(
    g: &[i32],
    i: usize,
    cols: usize,
    parent: Option<(&[i32], usize)>,
    coefs: &[i16; GRID_PRED_TAPS],
    max_abs: u32,
) -> (i32, i64) {
    let at = |j: Option<usize>| -> i64 { j.and_then(|j| g.get(j)).map_or(0, |&v| i64::from(v)) };
    let (x, y) = if cols == 0 {
        (0, 0)
    } else {
        (i % cols, i / cols)
    };
    let left = (x > 0).then(|| i - 1);
    let up = (y > 0).then(|| i - cols);
    let up_left = up.filter(|_| x > 0).map(|j| j - 1);
    let up_right = up.filter(|_| x + 1 < cols).map(|j| j + 1);
    let par = grid_parent(parent, x, y);
    let taps = [at(left), at(up), at(up_left), at(up_right), par];
    let sum: i64 = taps
        .iter()
        .zip(coefs)
        .map(|(&t, &c)| t * i64::from(c))
        .sum();
    let pred = (sum + (1 << (GRID_PRED_SHIFT - 1))) >> GRID_PRED_SHIFT;
    let m = i64::from(max_abs);
    let clamped = pred.clamp(-m, m);
    let frac = if clamped == pred {
        sum - (pred << GRID_PRED_SHIFT)
    } else {
        0
    };
    (clamped as i32, frac)
}

/// The model of a predicted element (§5.10) and the sign its residual is coded with: the §5.9
/// context `ctx` and +1; with the fractional split, `3·ctx + class` and −1 when `f < 0`.
#[inline]
fn pred_model(ctxs: GridContexts, ctx: usize, frac: i64) -> (usize, i64) {
    if ctxs.splits_fraction() {
        let sign = if frac < 0 { -1 } else { 1 };
        (ctx * FRACTION_CLASSES + fraction_class(frac), sign)
    } else {
        (ctx, 1)
    }
}

/// Residuals `value - prediction` of every grid (§5.10), grids in coding order.
pub fn grid_residuals(grids: &[(&[i32], PredShape)]) -> Vec<Vec<i32>> {
    residuals_and_fractions(grids).0
}

/// [`grid_residuals`], and the fractional part of every prediction ([`grid_prediction_parts`],
/// in `-128..=127`).
fn residuals_and_fractions(grids: &[(&[i32], PredShape)]) -> (Vec<Vec<i32>>, Vec<Vec<i16>>) {
    let mut res = Vec::with_capacity(grids.len());
    let mut fracs = Vec::with_capacity(grids.len());
    for (k, &(g, s)) in grids.iter().enumerate() {
        let parent = k.checked_sub(1).map(|j| (grids[j].0, grids[j].1.cols));
        let (r, f): (Vec<i32>, Vec<i16>) = g
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let (p, f) = grid_prediction_parts(g, i, s.cols, parent, &s.coefs, s.max_abs);
                let r = (i64::from(v) - i64::from(p)).clamp(i32::MIN.into(), i32::MAX.into());
                (r as i32, f as i16) // |f| <= 128
            })
            .unzip();
        res.push(r);
        fracs.push(f);
    }
    (res, fracs)
}

fn check_pred_shape(s: &PredShape) -> Result<(), EntropyError> {
    for m in [s.max_abs, s.res_max_abs] {
        if m == 0 || m > MAX_ABS_LIMIT {
            return Err(EntropyError::MaxAbsTooLarge { max_abs: m });
        }
    }
    Ok(())
}

/// The §5.10 coder's view of every element of `grids` (coding order, all values known), as
/// [`encode_pred_grids`] codes them with `ctxs`: its prediction, the index of its model in the
/// grid and the sign its residual is coded with. For the encoder's rate estimates (a
/// rate–distortion optimised trim of the latents); each `res_max_abs` is ignored.
///
/// # Errors
/// As [`encode_pred_grids`] before coding (ranges).
pub fn pred_models(
    grids: &[(&[i32], PredShape)],
    ctxs: GridContexts,
) -> Result<Vec<Vec<CodedElement>>, EntropyError> {
    for (t, &(g, s)) in grids.iter().enumerate() {
        check_pred_shape(&PredShape {
            res_max_abs: 1,
            ..s
        })?;
        check_symbols(t, g, s.max_abs)?;
    }
    Ok(pred_plan(grids, ctxs))
}

/// [`pred_models`] without the checks (values within `max_abs`, checked by the callers).
fn pred_plan(grids: &[(&[i32], PredShape)], ctxs: GridContexts) -> Vec<Vec<CodedElement>> {
    let (residuals, fractions) = residuals_and_fractions(grids);
    grids
        .iter()
        .zip(&residuals)
        .zip(&fractions)
        .map(|((&(g, s), r), f)| {
            g.iter()
                .zip(r)
                .zip(f)
                .enumerate()
                .map(|(i, ((&v, &r), &frac))| {
                    let ctx = grid_context(g, i, s.cols, ctxs);
                    let (j, sign) = pred_model(ctxs, ctx, frac.into());
                    // The prediction: |v| and |pred| are within max_abs, so v − r fits.
                    (v - r, j, sign)
                })
                .collect()
        })
        .collect()
}

/// Encodes predicted latent grids into one range-coded stream (§5.10), grids in coding order
/// (each one's parent is the grid before it): for every grid, `ctxs.count()` fresh adaptive
/// models over the residual alphabet; each residual in row-major order is coded under the
/// §5.9 context of the already coded *values*. Only empty grids give an empty stream.
///
/// # Errors
/// [`EntropyError::MaxAbsTooLarge`] for a range outside `1..=MAX_ABS_LIMIT`,
/// [`EntropyError::SymbolOutOfRange`] for a value outside `-max_abs..=max_abs` or a residual
/// outside `-res_max_abs..=res_max_abs` (reported as the residual).
///
/// # Panics
/// Never.
pub fn encode_pred_grids(
    grids: &[(&[i32], PredShape)],
    ctxs: GridContexts,
) -> Result<Vec<u8>, EntropyError> {
    for (t, &(g, s)) in grids.iter().enumerate() {
        check_pred_shape(&s)?;
        check_symbols(t, g, s.max_abs)?;
    }
    let plan = pred_plan(grids, ctxs);
    for (t, (&(g, s), p)) in grids.iter().zip(&plan).enumerate() {
        let r: Vec<i32> = g
            .iter()
            .zip(p)
            .map(|(&v, &(pred, _, _))| v - pred)
            .collect();
        check_symbols(t, &r, s.res_max_abs)?;
    }
    let shaped: Vec<(&[i32], u32)> = grids.iter().map(|&(g, s)| (g, s.res_max_abs)).collect();
    encode_planned(&shaped, &plan, ModelSet::Flat(ctxs.pred_models()))
}

/// One grid of a residual-coded stream (§5.10, §5.11) for [`decode_residual_grids`]: `len`
/// values in rows of `cols` within `-max_abs..=max_abs`, residuals within
/// `-res_max_abs..=res_max_abs`.
struct ResidualGrid {
    len: usize,
    cols: usize,
    max_abs: u32,
    res_max_abs: u32,
}

/// The decoder shared by the §5.10 and §5.11 streams: for each grid (coding order, each one's
/// parent the grid before it), the fresh adaptive models of `set` over its residual alphabet;
/// `plan(k, g, i, parent)` gives element `i` of grid `k` (its first `i` values `g`) its
/// prediction, model and residual sign. With the §5.5 checks of whole words and an exhausted
/// stream, and every value within its grid's range; the caller checks canonical re-encoding.
/// `None` for a stream with nothing to code. `max_abs` values must be in
/// `1..=MAX_ABS_LIMIT` (checked by the callers).
fn decode_residual_grids(
    bytes: &[u8],
    grids: &[ResidualGrid],
    set: ModelSet,
    mut plan: impl FnMut(usize, &[i32], usize, Option<(&[i32], usize)>) -> (i32, usize, i64),
) -> Result<Option<Vec<Vec<i32>>>, EntropyError> {
    const PREALLOC_CAP: usize = 1 << 20;
    let total: usize = grids.iter().fold(0usize, |a, s| a.saturating_add(s.len));
    let Some(words) = stream_words(bytes, total)? else {
        return Ok(None);
    };
    let num_words = words.len();
    let mut dec = DefaultRangeDecoder::from_compressed(words).unwrap_infallible();
    let mut out: Vec<Vec<i32>> = Vec::with_capacity(grids.len().min(PREALLOC_CAP));
    let mut at = 0usize;
    for (n, s) in grids.iter().enumerate() {
        let m = i64::from(s.res_max_abs);
        let vmax = i64::from(s.max_abs);
        let mut models = LazyModels::new(set, s.res_max_abs);
        let mut g = Vec::with_capacity(s.len.min(PREALLOC_CAP));
        let parent = n
            .checked_sub(1)
            .and_then(|j| out.get(j).zip(grids.get(j)))
            .map(|(p, ps)| (p.as_slice(), ps.cols));
        for i in 0..s.len {
            let (pred, j, sign) = plan(n, &g, i, parent);
            let model = models.get(j).ok_or(EntropyError::InvalidData { at })?;
            let u = dec
                .decode_symbol(View(model))
                .map_err(|_| EntropyError::InvalidData { at })?;
            model.update(u);
            let v = i64::from(pred) + sign * (u as i64 - m); // u < 2 m + 1 <= 65535
            if v.abs() > vmax {
                return Err(EntropyError::InvalidData { at });
            }
            g.push(v as i32);
            at += 1;
        }
        out.push(g);
    }
    if !dec.maybe_exhausted() {
        return Err(EntropyError::NotExhausted {
            words: num_words,
            symbols: at,
        });
    }
    Ok(Some(out))
}

/// Decodes the stream of [`encode_pred_grids`] for grids of the given shapes (coding order),
/// with the checks of §5.5 (whole words, exhausted stream, canonical re-encoding) and §5.10
/// (every value `prediction + residual` within its grid's range).
///
/// The caller must bound `sum(len)` (the container checks it against the parameter limit).
///
/// # Errors
/// [`EntropyError::Misaligned`], [`EntropyError::InvalidData`] (also for a value out of
/// range), [`EntropyError::NotExhausted`], [`EntropyError::NotCanonical`],
/// [`EntropyError::MaxAbsTooLarge`].
///
/// # Panics
/// Never, for any input.
pub fn decode_pred_grids(
    bytes: &[u8],
    shapes: &[PredShape],
    ctxs: GridContexts,
) -> Result<Vec<Vec<i32>>, EntropyError> {
    for s in shapes {
        check_pred_shape(s)?;
    }
    let grids: Vec<ResidualGrid> = shapes
        .iter()
        .map(|s| ResidualGrid {
            len: s.len,
            cols: s.cols,
            max_abs: s.max_abs,
            res_max_abs: s.res_max_abs,
        })
        .collect();
    let plan = |k: usize, g: &[i32], i: usize, parent: Option<(&[i32], usize)>| {
        let s = &shapes[k];
        let (pred, frac) = grid_prediction_parts(g, i, s.cols, parent, &s.coefs, s.max_abs);
        let (j, sign) = pred_model(ctxs, grid_context(g, i, s.cols, ctxs), frac);
        (pred, j, sign)
    };
    let Some(out) = decode_residual_grids(bytes, &grids, ModelSet::Flat(ctxs.pred_models()), plan)?
    else {
        return Ok(shapes.iter().map(|_| Vec::new()).collect());
    };
    let refs: Vec<(&[i32], PredShape)> = out
        .iter()
        .map(|g| g.as_slice())
        .zip(shapes.iter().copied())
        .collect();
    if encode_pred_grids(&refs, ctxs)? != bytes {
        return Err(EntropyError::NotCanonical {
            words: bytes.len() / 4,
        });
    }
    Ok(out)
}

/// One grid of an ARM-coded stream (§5.11): `len` values in rows of `cols`, each in
/// `-max_abs..=max_abs`, coded as residuals in `-res_max_abs..=res_max_abs` from the ARM's
/// prediction; `level` selects the ARM's layer-1 biases. Its parent is the previous grid of
/// the list (none for the first); `layout` says where its twelve own-level inputs lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmShape {
    pub len: usize,
    pub cols: usize,
    pub max_abs: u32,
    pub res_max_abs: u32,
    pub level: usize,
    pub layout: crate::arm::ArmLayout,
}

/// Models of one grid in an ARM-coded stream: one per scale context and fraction class.
pub const ARM_MODELS: usize = crate::arm::ARM_SCALE_CONTEXTS * FRACTION_CLASSES;

/// The model index and residual sign of an element with ARM output `o` (§5.11): the scale
/// context and the class of the mean's fraction, `3·ctx + class`, and −1 when the fraction is
/// negative; with the prediction.
///
/// With the prior models of §5.11.1 (`prior`), the index is `6·s + c` of the finer scale
/// context `s = clamp((log_scale + 768) >> 6, 0, 23)` and fraction class
/// `c = min((|f| · 6) >> 7, 5)`.
#[inline]
fn arm_model(o: ArmOut, max_abs: u32, prior: bool) -> (i32, usize, i64) {
    let (pred, frac) = crate::arm::arm_prediction(o.mean, max_abs);
    let sign = if frac < 0 { -1 } else { 1 };
    let j = if prior {
        let s = ((o.log_scale + 768) >> 6).clamp(0, ARM_PRIOR_SCALE_CONTEXTS as i64 - 1) as usize;
        let c = (((frac.unsigned_abs() * ARM_PRIOR_FRACTION_CLASSES as u64) >> 7) as usize)
            .min(ARM_PRIOR_FRACTION_CLASSES - 1);
        s * ARM_PRIOR_FRACTION_CLASSES + c
    } else {
        crate::arm::scale_context(o.log_scale) * FRACTION_CLASSES + fraction_class(frac)
    };
    (pred, j, sign)
}

/// The models an ARM's stream starts each grid with (§5.11, §5.11.1).
fn arm_model_set(arm: &Arm) -> ModelSet {
    if arm.prior_models {
        ModelSet::ArmPrior
    } else {
        ModelSet::Flat(ARM_MODELS)
    }
}

/// The ARM's output for all-zero inputs of one level, computed once: most latents of the
/// finest levels have no non-zero neighbour at low rates. (The same values as
/// [`Arm::eval`]: a cache, not an approximation.)
struct ArmZero(ArmOut);

impl ArmZero {
    fn new(arm: &Arm, level: usize) -> Self {
        ArmZero(arm.eval(level, &[0; crate::arm::ARM_INPUTS]))
    }

    #[inline]
    fn eval(&self, arm: &Arm, level: usize, x: &[i64; crate::arm::ARM_INPUTS]) -> ArmOut {
        if x.iter().all(|&v| v == 0) {
            self.0
        } else {
            arm.eval(level, x)
        }
    }
}

fn check_arm_shapes(shapes: &[ArmShape], arm: &Arm) -> Result<(), EntropyError> {
    if !arm.is_valid() {
        return Err(EntropyError::Encoder(
            "the ARM's width, fractional bits or tensor sizes are out of range".into(),
        ));
    }
    for s in shapes {
        for m in [s.max_abs, s.res_max_abs] {
            if m == 0 || m > MAX_ABS_LIMIT {
                return Err(EntropyError::MaxAbsTooLarge { max_abs: m });
            }
        }
        if arm.prior_models && s.res_max_abs > ARM_PRIOR_MAX_RES {
            return Err(EntropyError::MaxAbsTooLarge {
                max_abs: s.res_max_abs,
            });
        }
        if s.level >= arm.levels {
            return Err(EntropyError::Encoder(format!(
                "grid level {} outside the ARM's {} levels",
                s.level, arm.levels
            )));
        }
    }
    Ok(())
}

/// The ARM's prediction, model and sign of every element of every grid (coding order), all
/// values known: computed in parallel over rows (the encoder's side of §5.11).
fn arm_plan(grids: &[(&[i32], ArmShape)], arm: &Arm) -> Vec<Vec<(i32, usize, i64)>> {
    use rayon::prelude::*;
    grids
        .iter()
        .enumerate()
        .map(|(k, &(g, s))| {
            let parent = k.checked_sub(1).map(|j| (grids[j].0, grids[j].1.cols));
            // Eight image rows (or 16,384 elements of a line) per task.
            let chunk = (s.cols.max(1) * 8).min(1 << 14);
            let mut plan = vec![(0, 0, 1); g.len()];
            let zero = ArmZero::new(arm, s.level);
            plan.par_chunks_mut(chunk).enumerate().for_each(|(c, out)| {
                for (r, o) in out.iter_mut().enumerate() {
                    let i = c * chunk + r;
                    let x = crate::arm::arm_inputs(g, i, s.cols, s.layout, parent);
                    *o = arm_model(zero.eval(arm, s.level, &x), s.max_abs, arm.prior_models);
                }
            });
            plan
        })
        .collect()
}

/// Encodes latent grids with the ARM `arm` into one range-coded stream (§5.11), grids in
/// coding order (each one's parent is the grid before it): for every grid, [`ARM_MODELS`]
/// fresh adaptive models over its residual alphabet; each element in row-major order is coded
/// as its residual from the ARM's prediction under the model of its scale context and
/// fraction class. Only empty grids give an empty stream.
///
/// # Errors
/// [`EntropyError::MaxAbsTooLarge`], [`EntropyError::SymbolOutOfRange`] (a value outside its
/// range, or a residual outside `-res_max_abs..=res_max_abs`, reported as the residual), and
/// [`EntropyError::Encoder`] for a grid level the ARM does not cover or a wrong length.
///
/// # Panics
/// Never.
pub fn encode_arm_grids(grids: &[(&[i32], ArmShape)], arm: &Arm) -> Result<Vec<u8>, EntropyError> {
    check_arm_grids(grids, arm)?;
    let plan = arm_plan(grids, arm);
    encode_arm_planned(grids, &plan, arm)
}

/// [`encode_arm_grids`] with each grid's residual range the smallest bit width's
/// (`2^(b-1) - 1`, b in 2..=16) that holds its residuals (each `ArmShape::res_max_abs` is
/// ignored): returns those bit widths (coding order) and the stream.
///
/// # Errors
/// As [`encode_arm_grids`], and [`EntropyError::MaxAbsTooLarge`] for a residual that needs
/// more than 16 bits (12 with the prior models of §5.11.1).
pub fn encode_arm_grids_fitted(
    grids: &[(&[i32], ArmShape)],
    arm: &Arm,
) -> Result<(Vec<u8>, Vec<u8>), EntropyError> {
    check_arm_grids(&any_residual(grids, arm), arm)?;
    let plan = arm_plan(grids, arm);
    let mut bits = Vec::with_capacity(grids.len());
    let mut shaped = Vec::with_capacity(grids.len());
    for (&(g, s), p) in grids.iter().zip(&plan) {
        let r = g
            .iter()
            .zip(p)
            .map(|(&v, &(pred, _, _))| (i64::from(v) - i64::from(pred)).unsigned_abs())
            .max()
            .unwrap_or(0)
            .max(1);
        if r > u64::from(arm_res_limit(arm)) {
            return Err(EntropyError::MaxAbsTooLarge {
                max_abs: r.min(u64::from(u32::MAX)) as u32,
            });
        }
        let b = (65 - r.leading_zeros()) as u8; // smallest b with 2^(b-1) - 1 >= r
        bits.push(b.max(2));
        shaped.push((
            g,
            ArmShape {
                res_max_abs: (1u32 << (b.max(2) - 1)) - 1,
                ..s
            },
        ));
    }
    Ok((bits, encode_arm_planned(&shaped, &plan, arm)?))
}

/// One element as a residual coder codes it (the ARM, §5.11, or the predictor, §5.10): its
/// prediction, its model's index in the grid and its residual's sign.
pub type CodedElement = (i32, usize, i64);

/// The ARM's view of every element of `grids` (coding order, all values known), as
/// [`encode_arm_grids`] codes them: its prediction, the index of its model in the grid (one
/// of [`ARM_MODELS`]) and the sign its residual is coded with. For the encoder's rate
/// estimates (a rate–distortion optimised trim of the latents); each `res_max_abs` is
/// ignored.
///
/// # Errors
/// As [`encode_arm_grids_fitted`] before coding (shapes, ranges, lengths).
pub fn arm_models(
    grids: &[(&[i32], ArmShape)],
    arm: &Arm,
) -> Result<Vec<Vec<CodedElement>>, EntropyError> {
    check_arm_grids(&any_residual(grids, arm), arm)?;
    Ok(arm_plan(grids, arm))
}

/// `grids` with every residual range the widest `arm` may code (for checks made before the
/// ranges are known).
fn any_residual<'a>(grids: &[(&'a [i32], ArmShape)], arm: &Arm) -> Vec<(&'a [i32], ArmShape)> {
    let res_max_abs = arm_res_limit(arm);
    grids
        .iter()
        .map(|&(g, s)| (g, ArmShape { res_max_abs, ..s }))
        .collect()
}

/// The widest residual range of a stream coded with `arm`'s models (§5.11.1).
fn arm_res_limit(arm: &Arm) -> u32 {
    if arm.prior_models {
        ARM_PRIOR_MAX_RES
    } else {
        MAX_ABS_LIMIT
    }
}

fn check_arm_grids(grids: &[(&[i32], ArmShape)], arm: &Arm) -> Result<(), EntropyError> {
    let shapes: Vec<ArmShape> = grids.iter().map(|g| g.1).collect();
    check_arm_shapes(&shapes, arm)?;
    for (t, &(g, s)) in grids.iter().enumerate() {
        check_symbols(t, g, s.max_abs)?;
        if g.len() != s.len {
            return Err(EntropyError::Encoder(format!(
                "grid {t} has {} values, not {}",
                g.len(),
                s.len
            )));
        }
    }
    Ok(())
}

/// [`encode_planned`] for ARM-coded grids (§5.11).
fn encode_arm_planned(
    grids: &[(&[i32], ArmShape)],
    plan: &[Vec<CodedElement>],
    arm: &Arm,
) -> Result<Vec<u8>, EntropyError> {
    let shaped: Vec<(&[i32], u32)> = grids.iter().map(|&(g, s)| (g, s.res_max_abs)).collect();
    encode_planned(&shaped, plan, arm_model_set(arm))
}

/// The encoder shared by the §5.10 and §5.11 streams (the decoder's counterpart is
/// [`decode_residual_grids`]): for each grid (coding order) with its residual range
/// `res_max_abs`, the fresh adaptive models of `set` over its residual alphabet; element `i`
/// codes `sign · (value − prediction)` with model `j`, as its `plan` entry says. Only empty
/// grids give an empty stream.
fn encode_planned(
    grids: &[(&[i32], u32)],
    plan: &[Vec<CodedElement>],
    set: ModelSet,
) -> Result<Vec<u8>, EntropyError> {
    if grids.iter().all(|(g, _)| g.is_empty()) {
        return Ok(Vec::new());
    }
    let coder_err = |e| EntropyError::Encoder(format!("{e:?}"));
    let mut enc = DefaultRangeEncoder::new();
    for (t, (&(g, res_max_abs), p)) in grids.iter().zip(plan).enumerate() {
        let m = i64::from(res_max_abs);
        let mut models = LazyModels::new(set, res_max_abs);
        for (index, (&v, &(pred, j, sign))) in g.iter().zip(p).enumerate() {
            let r = sign * (i64::from(v) - i64::from(pred));
            if r.abs() > m {
                return Err(EntropyError::SymbolOutOfRange {
                    tensor: t,
                    index,
                    value: r.clamp(i32::MIN.into(), i32::MAX.into()) as i32,
                    max_abs: res_max_abs,
                });
            }
            let u = (r + m) as usize;
            let model = models
                .get(j)
                .ok_or_else(|| EntropyError::Encoder(format!("model {j} out of range")))?;
            enc.encode_symbol(u, View(model)).map_err(coder_err)?;
            model.update(u);
        }
    }
    Ok(stream_bytes(enc))
}

/// Decodes the stream of [`encode_arm_grids`] for grids of the given shapes (coding order),
/// with the checks of §5.5 (whole words, exhausted stream, canonical re-encoding) and §5.11
/// (every value `prediction + residual` within its grid's range).
///
/// The caller must bound `sum(len)` (the container checks it against the parameter limit).
///
/// # Errors
/// [`EntropyError::Misaligned`], [`EntropyError::InvalidData`] (also for a value out of
/// range), [`EntropyError::NotExhausted`], [`EntropyError::NotCanonical`],
/// [`EntropyError::MaxAbsTooLarge`], [`EntropyError::Encoder`] (a level the ARM lacks).
///
/// # Panics
/// Never, for any input.
pub fn decode_arm_grids(
    bytes: &[u8],
    shapes: &[ArmShape],
    arm: &Arm,
) -> Result<Vec<Vec<i32>>, EntropyError> {
    check_arm_shapes(shapes, arm)?;
    let grids: Vec<ResidualGrid> = shapes
        .iter()
        .map(|s| ResidualGrid {
            len: s.len,
            cols: s.cols,
            max_abs: s.max_abs,
            res_max_abs: s.res_max_abs,
        })
        .collect();
    let zeros: Vec<ArmZero> = shapes.iter().map(|s| ArmZero::new(arm, s.level)).collect();
    let plan = |k: usize, g: &[i32], i: usize, parent: Option<(&[i32], usize)>| {
        let s = &shapes[k];
        let x = crate::arm::arm_inputs(g, i, s.cols, s.layout, parent);
        arm_model(zeros[k].eval(arm, s.level, &x), s.max_abs, arm.prior_models)
    };
    let Some(out) = decode_residual_grids(bytes, &grids, arm_model_set(arm), plan)? else {
        return Ok(shapes.iter().map(|_| Vec::new()).collect());
    };
    let refs: Vec<(&[i32], ArmShape)> = out
        .iter()
        .map(|g| g.as_slice())
        .zip(shapes.iter().copied())
        .collect();
    if encode_arm_grids(&refs, arm)? != bytes {
        return Err(EntropyError::NotCanonical {
            words: bytes.len() / 4,
        });
    }
    Ok(out)
}

/// Bits of Deep Compression's CSR relative-index scheme (Han et al. 2016, §2) for one mask,
/// for comparison only (not a coding mode of the format): every kept element stores the gap
/// to the previous kept element in `index_bits` bits; a gap of `2^index_bits` or more first
/// emits filler entries (explicit zeros), each costing `index_bits` as well. Returns
/// `(index entries including fillers, fillers)`.
pub fn csr_relative_index_entries(mask: &[bool], index_bits: u32) -> (u64, u64) {
    let max_gap = (1u64 << index_bits.clamp(1, 32)) - 1;
    let (mut entries, mut fillers, mut gap) = (0u64, 0u64, 0u64);
    for &b in mask {
        gap += 1;
        if b {
            let f = (gap - 1) / max_gap;
            fillers += f;
            entries += f + 1;
            gap = 0;
        }
    }
    (entries, fillers)
}

/// A finished range coder's §5.5 stream: its 32-bit words, little-endian.
fn stream_bytes(enc: DefaultRangeEncoder) -> Vec<u8> {
    let words = enc.into_compressed().unwrap_infallible();
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §5.11.1: the table printed in `codec-spec.md` is this one, row for row.
    #[test]
    fn arm_prior_table_is_the_spec_table() {
        let spec =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/codec-spec.md")).unwrap();
        let from = spec.find("### 5.11.1").unwrap();
        let rows: Vec<Vec<u32>> = spec[from..]
            .lines()
            .skip_while(|l| !l.starts_with("| s | Q |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.split(|c: char| c == '|' || c.is_whitespace())
                    .filter(|t| !t.is_empty())
                    .map(|t| t.parse().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(rows.len(), ARM_PRIOR_SCALE_CONTEXTS);
        for (s, (row, &(q, cells))) in rows.iter().zip(&ARM_PRIOR_TABLE).enumerate() {
            let want: Vec<u32> = [s as u32, q]
                .into_iter()
                .chain(cells.iter().flatten().copied())
                .collect();
            assert_eq!(row, &want, "row s = {s}");
        }
    }

    /// §5.11.1: the table is the Laplace masses it says it is (within rounding), and the
    /// prior counts are at least 1, peak at 0 or 1, fall away from there and stay far under
    /// the count limit at the widest residual range.
    #[test]
    fn arm_prior_counts_follow_their_laplace() {
        for (s, &(q, cells)) in ARM_PRIOR_TABLE.iter().enumerate() {
            let b = (-3.0 + (s as f64 + 0.5) / 4.0).exp();
            let want_q = (65536.0 * (-1.0 / b).exp()).round().min(65535.0);
            assert_eq!(f64::from(q), want_q, "Q of s = {s}");
            for (c, &[a, bb, cc]) in cells.iter().enumerate() {
                let mu = (2 * c + 1) as f64 / 24.0;
                let cdf = |x: f64| {
                    if x < mu {
                        0.5 * ((x - mu) / b).exp()
                    } else {
                        1.0 - 0.5 * (-(x - mu) / b).exp()
                    }
                };
                let mass = |r: f64| 2048.0 * (cdf(r + 0.5) - cdf(r - 0.5));
                for (got, r) in [(a, 0.0), (bb, 1.0), (cc, -1.0)] {
                    assert!(
                        (f64::from(got) - mass(r)).abs() <= 0.5 + 1e-9,
                        "s {s} c {c} r {r}"
                    );
                }
                let j = s * ARM_PRIOR_FRACTION_CLASSES + c;
                for m in [1u32, 7, ARM_PRIOR_MAX_RES] {
                    let counts = arm_prior_counts(j, m);
                    let m = m as usize;
                    assert_eq!(counts.len(), 2 * m + 1);
                    assert!(counts.iter().all(|&n| n >= 1));
                    assert_eq!(counts[m], 1 + a);
                    assert!(counts[m + 2..].windows(2).all(|w| w[0] >= w[1]));
                    assert!(counts[..m - 1].windows(2).all(|w| w[0] <= w[1]));
                    let total: u64 = counts.iter().map(|&n| u64::from(n)).sum();
                    assert!(total < u64::from(COUNT_LIMIT) / 16, "total {total}");
                }
            }
        }
    }
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn roundtrip(tensors: &[Vec<i32>], max_abs: u32) -> Vec<u8> {
        let refs: Vec<&[i32]> = tensors.iter().map(|t| t.as_slice()).collect();
        let bytes = encode_tensors(&refs, max_abs).unwrap();
        let lens: Vec<usize> = tensors.iter().map(|t| t.len()).collect();
        let back = decode_tensors(&bytes, &lens, max_abs).unwrap();
        assert_eq!(back, tensors);
        assert_eq!(
            estimate_bits(&refs, max_abs).unwrap(),
            8 * bytes.len() as u64
        );
        bytes
    }

    #[test]
    fn model_probabilities_sum_to_one_and_search_inverts_lookup() {
        for k in [2usize, 3, 5, 127, 1023] {
            let mut m = AdaptiveModel::new(k, FORMAT_PARAMS);
            let mut rng = ChaCha8Rng::seed_from_u64(k as u64);
            for round in 0..3 {
                let mut next = 0u64;
                for u in 0..k {
                    let (lo, p) = m.lookup(u);
                    assert_eq!(u64::from(lo), next, "k={k} u={u}");
                    next += u64::from(p.get());
                    for q in [u64::from(lo), u64::from(lo) + u64::from(p.get()) - 1] {
                        assert_eq!(m.search(q), (u, lo, p));
                    }
                }
                assert_eq!(next, 1 << PRECISION);
                for _ in 0..(5000 * round) {
                    m.update(rng.gen_range(0..k).min(rng.gen_range(0..k)));
                }
            }
        }
    }

    #[test]
    fn fenwick_matches_counts_after_rescales() {
        let mut m = AdaptiveModel::new(
            9,
            ModelParams {
                init: 1,
                inc: 5,
                limit: 64,
            },
        );
        for i in 0..500 {
            m.update((i * 7) % 9);
            let mut s = 0u64;
            for u in 0..=9 {
                assert_eq!(m.prefix(u), s);
                if u < 9 {
                    s += u64::from(m.counts[u]);
                }
            }
            assert_eq!(m.total, s);
            assert!(m.total <= 64);
        }
    }

    #[test]
    fn edge_cases_roundtrip() {
        roundtrip(&[], 7);
        roundtrip(&[vec![]], 7);
        roundtrip(&[vec![], vec![], vec![3]], 7);
        roundtrip(&[vec![0; 1000]], 1);
        roundtrip(&[vec![5; 999], vec![-5; 3]], 5);
        roundtrip(&[vec![32767, -32767, 0, 1, -1]], MAX_ABS_LIMIT);
        roundtrip(&[vec![1, -1, 1, 1, -1, 0]], 1);
        let e = roundtrip(&[vec![0; 10], vec![]], 0);
        assert!(e.is_empty());
        assert!(roundtrip(&[], 100).is_empty());
        // Many tensors.
        let many: Vec<Vec<i32>> = (0..200)
            .map(|i| vec![(i % 31) - 15; i as usize % 5])
            .collect();
        roundtrip(&many, 15);
    }

    /// The mode symbol (§5.2) is the first bit of the first word (words are little endian).
    fn mode_of(bytes: &[u8]) -> u8 {
        bytes[3] >> 7
    }

    #[test]
    fn encoder_picks_the_cheaper_mode() {
        // Two tensors with disjoint constant values: a fresh model per tensor is cheaper.
        let a = roundtrip(&[vec![5; 2000], vec![-5; 2000]], 127);
        assert_eq!(mode_of(&a), 1);
        // Many tiny tensors from one distribution: sharing is cheaper.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let many: Vec<Vec<i32>> = (0..100)
            .map(|_| (0..20).map(|_| rng.gen_range(-3..=3)).collect())
            .collect();
        let b = roundtrip(&many, 127);
        assert_eq!(mode_of(&b), 0);
        // Both are exactly the shorter of the two single-mode encodings.
        for t in [vec![vec![5; 2000], vec![-5; 2000]], many] {
            let refs: Vec<&[i32]> = t.iter().map(|x| x.as_slice()).collect();
            let s = encode_mode(&refs, 127, FORMAT_PARAMS, Mode::Shared).unwrap();
            let r = encode_mode(&refs, 127, FORMAT_PARAMS, Mode::ResetPerTensor).unwrap();
            let best = encode_tensors(&refs, 127).unwrap();
            assert_eq!(best.len(), s.len().min(r.len()));
            // The non-chosen mode is also a valid (canonical) stream for the decoder.
            let lens: Vec<usize> = t.iter().map(|x| x.len()).collect();
            assert_eq!(decode_tensors(&s, &lens, 127).unwrap(), t);
            assert_eq!(decode_tensors(&r, &lens, 127).unwrap(), t);
        }
    }

    #[test]
    fn constant_tensor_is_cheap() {
        let bytes = roundtrip(&[vec![3; 20000]], 127);
        // Learning cost only: far below 1 bit per symbol.
        assert!(bytes.len() * 8 < 20000 / 10, "{} bytes", bytes.len());
    }

    #[test]
    fn out_of_range_and_bad_params_are_errors() {
        assert!(matches!(
            encode_tensors(&[&[0, 8]], 7),
            Err(EntropyError::SymbolOutOfRange {
                tensor: 0,
                index: 1,
                value: 8,
                ..
            })
        ));
        assert!(matches!(
            encode_tensors(&[&[], &[i32::MIN]], 7),
            Err(EntropyError::SymbolOutOfRange { tensor: 1, .. })
        ));
        assert!(matches!(
            encode_tensors(&[&[1]], 0),
            Err(EntropyError::SymbolOutOfRange { .. })
        ));
        assert!(matches!(
            encode_tensors(&[&[1]], MAX_ABS_LIMIT + 1),
            Err(EntropyError::MaxAbsTooLarge { .. })
        ));
        assert!(matches!(
            decode_tensors(&[1, 2, 3], &[1], 7),
            Err(EntropyError::Misaligned { len: 3 })
        ));
        assert!(matches!(
            decode_tensors(&[0, 0, 0, 0], &[1], 0),
            Err(EntropyError::NonEmptyDegenerate { len: 4 })
        ));
    }

    #[test]
    fn extra_words_are_detected() {
        let t: Vec<i32> = (0..300).map(|i| (i % 9) - 4).collect();
        let mut bytes = encode_tensors(&[&t], 4).unwrap();
        bytes.extend_from_slice(&[0xA5; 8]);
        assert!(matches!(
            decode_tensors(&bytes, &[300], 4),
            Err(EntropyError::NotExhausted { .. })
        ));
        // Data for nothing.
        assert!(decode_tensors(&[7, 7, 7, 7], &[], 4).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for len in [0usize, 4, 8, 64, 400] {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                let _ = decode_tensors(&bytes, &[10, 0, 300], 127);
                let _ = decode_tensors(&bytes, &[1000], 1);
            }
        }
    }

    /// Exact output words pinned: any change of the model or coder breaks the format.
    #[test]
    fn exact_bytes_are_pinned() {
        let t: Vec<i32> = (0..40).map(|i| ((i * 7) % 11) - 5).collect();
        let bytes = encode_tensors(&[&t, &[0, 0, 1]], 31).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PINNED_HEX);
    }
    const PINNED_HEX: &str = "b5260336af606eae47f231469cb7786a2217193ba7df8a088bf04911";

    fn sample(rng: &mut ChaCha8Rng, dist: &str, scale: f64, max_abs: i32) -> i32 {
        let x: f64 = match dist {
            "uniform" => rng.gen_range(-1.0..1.0) * scale,
            "gauss" => {
                let u1: f64 = rng.gen_range(1e-12..1.0);
                let u2: f64 = rng.gen();
                scale * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            }
            _ => {
                let u: f64 = rng.gen_range(-0.5..0.5);
                -scale * u.signum() * (1.0 - 2.0 * u.abs()).max(1e-300).ln()
            }
        };
        (x.round() as i32).clamp(-max_abs, max_abs)
    }

    fn entropy_bits(symbols: &[i32]) -> f64 {
        let mut h = std::collections::BTreeMap::new();
        for &s in symbols {
            *h.entry(s).or_insert(0usize) += 1;
        }
        let n = symbols.len() as f64;
        h.values()
            .map(|&c| {
                let p = c as f64 / n;
                -(c as f64) * p.log2()
            })
            .sum()
    }

    /// Tuning experiment (not a check): `cargo test --lib entropy::tests::tune -- --ignored
    /// --nocapture`. Prints the overhead over the empirical entropy of several parameter sets.
    #[test]
    #[ignore]
    fn tune() {
        let mut grid = vec![];
        for inc in [2u32, 4, 6, 8, 12] {
            for limit in [1u32 << 16, 1 << 17, 1 << 18, 1 << 20] {
                grid.push(ModelParams {
                    init: 1,
                    inc,
                    limit,
                });
            }
        }
        let mut total_over = vec![0f64; grid.len()];
        for (bits, n) in [(6u32, 2000usize), (8, 5000), (8, 40000), (10, 20000)] {
            let max_abs = (1i32 << (bits - 1)) - 1;
            for dist in ["uniform", "gauss", "laplace"] {
                for scale_frac in [0.05, 0.2, 0.9] {
                    let mut rng = ChaCha8Rng::seed_from_u64(bits as u64 * 1000 + n as u64);
                    let scale = scale_frac * max_abs as f64;
                    let syms: Vec<i32> = (0..n)
                        .map(|_| sample(&mut rng, dist, scale, max_abs))
                        .collect();
                    let h = entropy_bits(&syms);
                    let mut line = format!(
                        "bits={bits:2} n={n:5} {dist:8} s={scale_frac:4}: H={:.3} b/s |",
                        h / n as f64
                    );
                    for (g, p) in grid.iter().enumerate() {
                        let len = encode_with(&[&syms], max_abs as u32, *p).unwrap().len();
                        let over = (8.0 * len as f64 - h) / h.max(1.0);
                        total_over[g] += over;
                        line += &format!(" {:+.2}%", 100.0 * over);
                    }
                    println!("{line}");
                }
            }
        }
        for (g, p) in grid.iter().enumerate() {
            println!(
                "inc={:3} limit=2^{:2}: mean overhead {:+.3}%",
                p.inc,
                p.limit.trailing_zeros(),
                100.0 * total_over[g] / 36.0
            );
        }
    }

    /// Ideal code length (bits) of `symbols` under a fresh model, continuing `model` if given.
    fn ideal_bits(model: &mut AdaptiveModel, symbols: &[i32], m: i64) -> f64 {
        let mut bits = 0.0;
        for &v in symbols {
            let u = (i64::from(v) + m) as usize;
            let (_, p) = model.lookup(u);
            bits -= (f64::from(p.get()) / f64::from(1u32 << PRECISION)).log2();
            model.update(u);
        }
        bits
    }

    /// Experiment (not a check): one shared model for all tensors vs. a fresh model per tensor
    /// vs. separate weight/bias models, on SIREN-shaped synthetic tensors (ideal code lengths,
    /// so stream-termination words do not bias the comparison).
    /// `cargo test --lib entropy::tests::sharing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn sharing() {
        for (bits, width, depth) in [
            (8u32, 32usize, 3usize),
            (8, 64, 5),
            (10, 48, 4),
            (6, 128, 4),
        ] {
            let m = (1i64 << (bits - 1)) - 1;
            let k = 2 * m as usize + 1;
            for widths in ["same", "varied"] {
                let mut rng = ChaCha8Rng::seed_from_u64(bits as u64 + width as u64);
                let mut dims = vec![(2usize * 9, width)];
                dims.extend(std::iter::repeat_n((width, width), depth - 1));
                dims.push((width, 3));
                let mut tensors = vec![];
                for (i, &(a, b)) in dims.iter().enumerate() {
                    let frac = if widths == "same" {
                        0.25
                    } else {
                        [0.5, 0.1, 0.3, 0.05, 0.2, 0.4][i % 6]
                    };
                    let s = frac * m as f64;
                    let dist = ["gauss", "laplace", "uniform"][i % 3];
                    tensors.push(
                        (0..a * b)
                            .map(|_| sample(&mut rng, dist, s, m as i32))
                            .collect::<Vec<i32>>(),
                    );
                    tensors.push(
                        (0..b)
                            .map(|_| sample(&mut rng, "uniform", m as f64 * 0.6, m as i32))
                            .collect(),
                    );
                }
                let n: usize = tensors.iter().map(|t| t.len()).sum();
                let mut shared = AdaptiveModel::new(k, FORMAT_PARAMS);
                let b_shared: f64 = tensors.iter().map(|t| ideal_bits(&mut shared, t, m)).sum();
                let b_reset: f64 = tensors
                    .iter()
                    .map(|t| ideal_bits(&mut AdaptiveModel::new(k, FORMAT_PARAMS), t, m))
                    .sum();
                let mut mw = AdaptiveModel::new(k, FORMAT_PARAMS);
                let mut mb = AdaptiveModel::new(k, FORMAT_PARAMS);
                let b_split: f64 = tensors
                    .iter()
                    .enumerate()
                    .map(|(i, t)| ideal_bits(if i % 2 == 0 { &mut mw } else { &mut mb }, t, m))
                    .sum();
                let h: f64 = tensors.iter().map(|t| entropy_bits(t)).sum();
                let mut extra = String::new();
                for inc in [16u32, 32] {
                    let p = ModelParams {
                        init: 1,
                        inc,
                        limit: COUNT_LIMIT * (inc / 8),
                    };
                    let mut sh = AdaptiveModel::new(k, p);
                    let bs: f64 = tensors.iter().map(|t| ideal_bits(&mut sh, t, m)).sum();
                    let br: f64 = tensors
                        .iter()
                        .map(|t| ideal_bits(&mut AdaptiveModel::new(k, p), t, m))
                        .sum();
                    extra += &format!(
                        " | inc{inc}: shared {:.3} reset {:.3}",
                        bs / n as f64,
                        br / n as f64
                    );
                }
                println!("{extra}");
                println!(
                    "bits={bits} w={width:3} d={depth} {widths:6} n={n:6}: per-tensor H {:.3} b/s | \
                     shared {:.3} | reset {:.3} | weights/biases {:.3}",
                    h / n as f64,
                    b_shared / n as f64,
                    b_reset / n as f64,
                    b_split / n as f64
                );
            }
        }
    }
}
