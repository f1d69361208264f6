//! Encoder and decoder: ties media, model, fitting, quantization and the container together.

use crate::media::Image;

/// Quality presets, from the smallest file to the best quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Preset {
    Tiny,
    Small,
    Medium,
    Large,
    Huge,
}

/// Everything the encoder needs to know. `Default` gives the `medium` preset.
#[derive(Debug, Clone)]
pub struct EncodeConfig {
    pub preset: Preset,
    /// Hidden width (overrides the preset).
    pub width: Option<usize>,
    /// Number of sine layers (overrides the preset).
    pub depth: Option<usize>,
    /// Quantization bit width (overrides the preset).
    pub bits: Option<u8>,
    /// Fitting steps (overrides the preset).
    pub steps: Option<usize>,
    pub seed: u64,
    /// Rayon threads; `None` uses all cores.
    pub threads: Option<usize>,
}

impl Default for EncodeConfig {
    fn default() -> Self {
        EncodeConfig { preset: Preset::Medium, width: None, depth: None, bits: None, steps: None, seed: 0, threads: None }
    }
}

/// Progress reports sent by the encoder.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: usize,
    pub total: usize,
    /// PSNR (dB) of the current fit on the training pixels, if measured at this step.
    pub psnr: Option<f64>,
    pub phase: &'static str,
}

/// Result of encoding.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The complete `.inr` file.
    pub bytes: Vec<u8>,
    /// The decoder's reconstruction (bit-identical to what `decode` produces).
    pub recon: Image,
    /// PSNR (dB) of `recon` against the input.
    pub psnr: f64,
    /// 8 x file bytes / pixels.
    pub bpp: f64,
}

#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Render at this size instead of the coded one.
    pub size: Option<(u32, u32)>,
    pub limits: crate::format::Limits,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("invalid parameter: {0}")]
    Parameter(String),
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    #[error("invalid parameter: {0}")]
    Parameter(String),
}

/// Encode an image into a complete `.inr` file.
pub fn encode_image(
    _img: &Image,
    _cfg: &EncodeConfig,
    _progress: &mut dyn FnMut(&Progress),
) -> Result<Encoded, EncodeError> {
    Err(EncodeError::Parameter("not implemented yet".into()))
}

/// Decode a `.inr` file into an image.
pub fn decode(_bytes: &[u8], _opts: &DecodeOptions) -> Result<Image, DecodeError> {
    Err(DecodeError::Parameter("not implemented yet".into()))
}

/// Parse the header and section table without decoding the network.
pub fn inspect(bytes: &[u8]) -> Result<crate::format::FileInfo, crate::format::FormatError> {
    crate::format::inspect(bytes)
}
