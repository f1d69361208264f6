//! §4.7 Codebook section (flag bit 4, version 2): weight sharing. A tensor with a codebook
//! codes, per element, an index into a short table of integer centroids instead of the
//! quantized value itself; the weight is `centroid · step` (§6.2). Kept apart from the rest
//! of the container so that sections merge cleanly.

use super::{max_abs_for_bits, read_presence, write_presence, FormatError, Reader};

/// §3.4 Flag bit 4: a codebook section (§4.7) follows the sparsity section (if any).
pub const FLAG_CODEBOOK: u16 = 1 << 4;

/// One tensor's codebook (§4.7): symbol `v` of the tensor stands for the centroid
/// `values[v + zero]`, and the weight is `values[v + zero] as f32 * step` (§6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codebook {
    /// Index coded as symbol 0 (the pruned elements of a masked tensor have this index).
    pub zero: u16,
    /// Centroids in units of the tensor's step, strictly ascending, each in `i16` range.
    pub values: Vec<i32>,
}

impl Codebook {
    /// Number of centroids `k`.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// `true` for a codebook without centroids (never valid in a file).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Smallest and largest symbol of the tensor: `-zero ..= k - 1 - zero`.
    pub fn symbol_range(&self) -> (i32, i32) {
        let z = i32::from(self.zero);
        (-z, self.values.len() as i32 - 1 - z)
    }

    /// The smallest bit width (§3.7) whose alphabet holds every symbol of this codebook.
    pub fn min_bits(&self) -> u8 {
        let (lo, hi) = self.symbol_range();
        let need = lo.unsigned_abs().max(hi.unsigned_abs());
        (2u8..=16)
            .find(|&b| max_abs_for_bits(b) >= need)
            .unwrap_or(16)
    }

    /// The centroid (in step units) symbol `v` stands for, if `v` is inside the codebook.
    pub fn centroid(&self, v: i32) -> Option<i32> {
        let j = i64::from(v) + i64::from(self.zero);
        usize::try_from(j)
            .ok()
            .and_then(|j| self.values.get(j))
            .copied()
    }

    /// §4.7 validity against the tensor's bit width `bits`.
    pub(crate) fn validate(&self, tensor: usize, bits: u8) -> Result<(), FormatError> {
        let bad = |problem: &'static str, value: u64| FormatError::Codebook {
            tensor,
            problem,
            value,
        };
        let k = self.values.len();
        if k == 0 || k > usize::from(u16::MAX) {
            return Err(bad("size k (expected 1 ..= 65535 centroids)", k as u64));
        }
        if usize::from(self.zero) >= k {
            return Err(bad("zero index (expected < k)", self.zero.into()));
        }
        let (lo, hi) = self.symbol_range();
        let m = max_abs_for_bits(bits);
        if lo.unsigned_abs() > m || hi.unsigned_abs() > m {
            return Err(bad(
                "symbol range (expected -zero and k-1-zero inside the tensor's bit width)",
                u64::from(lo.unsigned_abs().max(hi.unsigned_abs())),
            ));
        }
        if let Some(&v) = self
            .values
            .iter()
            .find(|&&v| !(i32::from(i16::MIN)..=i32::from(i16::MAX)).contains(&v))
        {
            return Err(bad("centroid (expected an i16)", v.unsigned_abs().into()));
        }
        if let Some(w) = self.values.windows(2).find(|w| w[0] >= w[1]) {
            return Err(bad(
                "centroid order (expected strictly ascending)",
                w[1].unsigned_abs().into(),
            ));
        }
        Ok(())
    }
}

/// The serialised codebook section of `codebooks` (one entry per tensor, or empty), or
/// `None` when no tensor has a codebook. Validates every codebook against `tensor_bits`.
pub(super) fn write_codebooks(
    codebooks: &[Option<Codebook>],
    tensor_bits: &[u8],
) -> Result<Option<Vec<u8>>, FormatError> {
    if codebooks.iter().all(Option::is_none) {
        return Ok(None);
    }
    if codebooks.len() != tensor_bits.len() {
        return Err(FormatError::TensorCount {
            expected: tensor_bits.len(),
            found: codebooks.len(),
        });
    }
    let mut out = write_presence(codebooks.iter().map(Option::is_some), tensor_bits.len());
    for (t, (cb, &bits)) in codebooks.iter().zip(tensor_bits).enumerate() {
        let Some(cb) = cb else { continue };
        cb.validate(t, bits)?;
        out.extend_from_slice(&(cb.values.len() as u16).to_le_bytes());
        out.extend_from_slice(&cb.zero.to_le_bytes());
        for &v in &cb.values {
            out.extend_from_slice(&(v as i16).to_le_bytes());
        }
    }
    Ok(Some(out))
}

/// Reads the codebook section (§4.7) from `r`: the presence bitmap and, per present tensor,
/// `k`, `zero` and the centroids. Sizes come from the file bytes themselves (every read is
/// bounds-checked), so nothing is allocated beyond the file's length. Field validity against
/// the bit widths is checked later by [`check_codebooks`], once the step table is validated.
pub(super) fn read_codebooks(
    r: &mut Reader<'_>,
    num_tensors: usize,
) -> Result<Vec<Option<Codebook>>, FormatError> {
    let presence = r.take(num_tensors.div_ceil(8), "codebook presence bitmap")?;
    let present = read_presence(
        presence,
        num_tensors,
        "codebook presence bitmap",
        "at least one tensor with a codebook when flag bit 4 is set",
    )?;
    let mut out = Vec::with_capacity(num_tensors); // <= 130 (depth validated)
    for p in present {
        if !p {
            out.push(None);
            continue;
        }
        let k = r.u16("codebook size")?;
        let zero = r.u16("codebook zero index")?;
        let raw = r.take(2 * usize::from(k), "codebook centroids")?;
        let values = raw
            .chunks_exact(2)
            .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])))
            .collect();
        out.push(Some(Codebook { zero, values }));
    }
    Ok(out)
}

/// §4.7 validity of parsed codebooks against the tensors' bit widths.
pub(super) fn check_codebooks(
    codebooks: &[Option<Codebook>],
    tensor_bits: &[u8],
) -> Result<(), FormatError> {
    for (t, (cb, &bits)) in codebooks.iter().zip(tensor_bits).enumerate() {
        if let Some(cb) = cb {
            cb.validate(t, bits)?;
        }
    }
    Ok(())
}

/// Serialised size of the section for `codebooks` (0 without codebooks).
pub(super) fn section_bytes(codebooks: &[Option<Codebook>]) -> u64 {
    if codebooks.iter().all(Option::is_none) {
        return 0;
    }
    codebooks.len().div_ceil(8) as u64
        + codebooks
            .iter()
            .flatten()
            .map(|c| 4 + 2 * c.values.len() as u64)
            .sum::<u64>()
}

/// Replaces decoded symbols by their centroids (§6.2), checking that each symbol is inside
/// the codebook (a hostile file can code any symbol of the bit width's alphabet).
pub(super) fn map_symbols(
    tensor: usize,
    cb: &Codebook,
    symbols: &[i32],
) -> Result<Vec<i32>, FormatError> {
    symbols
        .iter()
        .enumerate()
        .map(|(index, &v)| {
            cb.centroid(v).ok_or(FormatError::CodebookIndex {
                tensor,
                index,
                value: v,
            })
        })
        .collect()
}
