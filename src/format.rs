//! STUB — to be replaced by the real container (see codec-spec.md).

/// Decoder limits (STUB).
#[derive(Debug, Clone, Default)]
pub struct Limits {}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("not implemented")]
    Todo,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FileInfo {}

pub fn inspect(_bytes: &[u8]) -> Result<FileInfo, FormatError> {
    Err(FormatError::Todo)
}

// ---- STUB types mirroring the agreed API (replaced by the real module at merge) ----
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Arch {
    pub coord_dims: u8,
    pub out_channels: u8,
    pub width: u16,
    pub depth: u8,
    pub pe_freqs: u8,
    pub pe_base_milli: u16,
    pub w0_first: u16,
    pub w0_hidden: u16,
}
impl Arch {
    pub fn in_features(&self) -> usize {
        self.coord_dims as usize * (1 + 2 * self.pe_freqs as usize)
    }
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        let w = self.width as usize;
        let mut v = vec![(self.in_features(), w)];
        for _ in 1..self.depth {
            v.push((w, w));
        }
        v.push((w, self.out_channels as usize));
        v
    }
    pub fn tensor_lens(&self) -> Vec<usize> {
        self.layer_dims().iter().flat_map(|&(i, o)| [i * o, o]).collect()
    }
    pub fn num_params(&self) -> usize {
        self.tensor_lens().iter().sum()
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub mantissa: u16,
    pub exponent: u8,
}
impl Step {
    pub fn to_f32(self) -> f32 {
        self.mantissa as f32 * (-(self.exponent as f32)).exp2()
    }
    pub fn from_f32(x: f32) -> Step {
        let mut e = 0u8;
        let mut m = x as f64;
        while m < 32768.0 && e < 60 {
            m *= 2.0;
            e += 1;
        }
        Step { mantissa: m.round().min(65535.0) as u16, exponent: e }
    }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QTensor {
    pub step: Step,
    pub symbols: Vec<i32>,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InrFile {
    pub width: u32,
    pub height: u32,
    pub arch: Arch,
    pub bits: u8,
    pub tensors: Vec<QTensor>,
}
pub fn write_file(f: &InrFile) -> Result<Vec<u8>, FormatError> {
    // STUB: raw i16 symbols.
    let mut v = Vec::new();
    v.extend_from_slice(&f.width.to_le_bytes());
    v.extend_from_slice(&f.height.to_le_bytes());
    let a = &f.arch;
    v.extend_from_slice(&[a.coord_dims, a.out_channels, a.depth, a.pe_freqs, f.bits]);
    for x in [a.width, a.pe_base_milli, a.w0_first, a.w0_hidden] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    for t in &f.tensors {
        v.extend_from_slice(&t.step.mantissa.to_le_bytes());
        v.push(t.step.exponent);
        for &s in &t.symbols {
            v.extend_from_slice(&(s as i16).to_le_bytes());
        }
    }
    Ok(v)
}
pub fn read_file(b: &[u8], _l: &Limits) -> Result<InrFile, FormatError> {
    let u16at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let width = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let height = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let arch = Arch {
        coord_dims: b[8],
        out_channels: b[9],
        depth: b[10],
        pe_freqs: b[11],
        width: u16at(13),
        pe_base_milli: u16at(15),
        w0_first: u16at(17),
        w0_hidden: u16at(19),
    };
    let bits = b[12];
    let mut p = 21;
    let mut tensors = vec![];
    for n in arch.tensor_lens() {
        let step = Step { mantissa: u16at(p), exponent: b[p + 2] };
        p += 3;
        let symbols = (0..n).map(|i| u16at(p + 2 * i) as i16 as i32).collect();
        p += 2 * n;
        tensors.push(QTensor { step, symbols });
    }
    Ok(InrFile { width, height, arch, bits, tensors })
}
