//! The integration tests, one module per area, built as one test binary (one link instead
//! of one per file: the clean-clone build of `cargo test --release` is the CI's longest step).
//! `cargo test --release --test suite <module>::` runs one area.

mod common;

mod audio;
mod audio_base;
mod audio_grid;
mod audio_mod;
mod batch;
mod cli;
mod codebook;
mod codec;
mod faults;
mod format;
mod format_mod;
mod golden;
mod golden_audio;
mod golden_audio_base;
mod golden_audio_mod;
mod grid;
mod grid_arm;
mod grid_meta;
mod grid_predict;
mod grid_shared;
mod limits;
mod media;
mod meta;
mod modulation;
mod properties;
mod rd;
mod sparse;
