//! `inr`: a codec that stores images and audio as small sine-activated neural networks
//! (SIREN implicit neural representations), in the family of COIN, COIN++ and Strümpler et al.
//!
//! The public API is small: [`encode_grid`] (the grid mode, `inr encode`'s default for images),
//! [`encode_image`] (the weight mode), [`decode`], [`inspect`], plus media I/O helpers.
//! [`GridEncodeConfig::too_large`] says when an image needs the weight mode instead.
//! Module map (dependencies point one way; `format` and `entropy` never import the model):
//! - [`format`](mod@format): the `.inr` container, byte for byte as in `codec-spec.md` (no candle).
//! - [`entropy`]: constriction wrappers; rate estimates use the same code path as coding.
//! - [`media`]: image I/O and coordinate grids. [`metrics`]: PSNR and bpp.
//! - `model`, `kernel`, `fit`, `quant`: the SIREN, its fused CPU kernels, fitting and quantization.
//! - [`modulation`] and `mod_codec`: the modulation mode (a shared meta-learned network, per
//!   image a latent grid; codec-spec §12).
//!   `audio_mod_codec` is the same mode for audio (a row of latents per clip; §12.7).
//! - [`grid`] and `grid_codec`: the grid mode (per image a latent pyramid and a small SIREN
//!   fitted under a rate–distortion objective; codec-spec §13).
//! - [`rd`] and [`batch`]: rate–distortion sweeps and dataset compression.

pub mod arm;
pub mod arm_fit;
pub mod audio;
mod audio_codec;
mod audio_grid_codec;
mod audio_mod_codec;
pub mod base;
pub mod batch;
mod codec;
pub mod entropy;
mod fit;
pub mod format;
pub mod grid;
mod grid_codec;
pub mod grid_meta;
mod kernel;
mod l0;
pub mod media;
pub mod meta;
pub mod metrics;
mod mod_codec;
mod model;
pub mod modulation;
mod quant;
pub mod rd;
pub mod util;

pub use arm_fit::ArmFit;
pub use audio_codec::{
    decode_audio, decode_audio_stream, decode_audio_stream_with, decode_audio_with, encode_audio,
    eval_audio, eval_audio_with, output_spec, AudioEncodeConfig, AudioEncoded, AudioQuality,
    AudioSink, BLOCK_WINDOWS,
};
pub use audio_grid_codec::{
    decode_audio_grid_stream, encode_audio_grid, AudioGridEncodeConfig, AUDIO_ARM_FIT,
    AUDIO_GRID_PRESET_LAMBDAS, DEFAULT_AUDIO_GRID_STEPS, DEFAULT_SEGMENT,
};
pub use audio_mod_codec::{encode_audio_modulated, AudioModEncodeConfig};
pub use codec::{
    bpp_meets, decode, default_lr, default_warmup, encode_image, inspect, inspect_with, kbps_meets,
    width_for_rate, BaseChoice, BitAllocation, DecodeError, DecodeOptions, EncodeConfig,
    EncodeError, Encoded, Preset, Progress, PruneMethod, PruneScope, RATE_TOLERANCE,
    WEIGHTS_PER_BYTE,
};
pub use format::Limits;
pub use grid::GridFit;
pub use grid_codec::{
    encode_grid, grid_arch, GridEncodeConfig, OutputLayer, DEFAULT_LEVELS, GRID_PRESET_LAMBDAS,
    GRID_SHARED_STEPS, SHARED_HEAD_MIN_PIXELS, SHARED_TRY_PIXELS, SHARED_TRY_STEPS,
};
pub use mod_codec::{
    encode_modulated, trained_l2 as mod_codec_trained_l2, ModEncodeConfig, DEFAULT_LATENT_STEP,
    DEFAULT_QAT_STEPS,
};
pub use modulation::LatentFit;

/// Internals exposed for the criterion benches only; not a stable API.
#[doc(hidden)]
pub mod bench_api {
    pub use crate::fit::{tensor_bits, Fitter, Phase, QuantSpec, Signal};
    pub use crate::kernel::{forward_tile_infer, sincos, train_tile, NetShape};
    pub use crate::model::{render, render_window, shape_of, siren_init, Grid1, Grid2};
}
