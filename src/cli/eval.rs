//! `inr eval`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;

use super::{json_psnr, load_input, path_str, print_json, read_inr, say, Ctx};

/// Decode a .inr file and compare it with the original: PSNR and bpp (audio: PSNR, SNR, kbit/s).
///
/// The file is decoded at its coded size.
///
/// For an audio file the reference is the original WAV; prints PSNR (waveform mapped to
/// [0, 1]), SNR and kbit/s from the real file size.
///
/// Prints `PSNR <dB>  bpp <bits/pixel>  bytes <file size>`; PSNR is one MSE over all 8-bit
/// samples of all channels (peak 255), bpp is 8 x .inr file bytes / pixels.
#[derive(clap::Args, Debug)]
#[command(after_long_help = super::INPUT_POLICY)]
pub struct EvalArgs {
    /// Original image.
    #[arg(value_name = "REF")]
    pub reference: PathBuf,
    /// Encoded .inr file.
    #[arg(value_name = "IN.inr")]
    pub input: PathBuf,
    /// Drop a translucent alpha channel of the reference (compare colours only).
    #[arg(long)]
    pub ignore_alpha: bool,
    /// A base file (.inrb) the input may have been coded from, besides the embedded ones
    /// (repeatable).
    #[arg(long = "base", value_name = "FILE.inrb")]
    pub bases: Vec<PathBuf>,
    #[command(flatten)]
    pub limits: super::LimitArgs,
}

pub fn run(args: EvalArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let limits = args.limits.limits();
    let bytes = read_inr(&args.input, &limits)?;
    if inr::format::peek_modality(&bytes).ok() == Some(inr::format::MODALITY_AUDIO) {
        return super::audio::eval(args, &bytes, ctx);
    }
    let loaded = load_input(&args.reference, args.ignore_alpha)?;
    ctx.notes(&loaded.notes);
    let reference = loaded.image;
    let start = Instant::now();
    let opts = inr::DecodeOptions {
        limits,
        bases: super::load_bases(&args.bases)?,
        ..Default::default()
    };
    let img = inr::decode(&bytes, &opts)
        .map_err(|e| super::decode_context(e, format!("cannot decode {}", args.input.display())))?;
    let secs = start.elapsed().as_secs_f64();
    let psnr = inr::metrics::psnr(&reference, &img)
        .context("the .inr file does not match the reference image")?;
    let file_bytes = bytes.len() as u64;
    let bpp = inr::metrics::bpp(file_bytes, img.width, img.height)?;
    if ctx.json {
        print_json(&serde_json::json!({
            "reference": path_str(&args.reference),
            "input": path_str(&args.input),
            "width": img.width,
            "height": img.height,
            "channels": img.channels,
            "psnr": json_psnr(psnr),
            "bpp": bpp,
            "bytes": file_bytes,
            "decode_s": secs,
        }))
    } else {
        say(format_args!(
            "PSNR {} dB  bpp {bpp:.3}  bytes {file_bytes}",
            inr::metrics::format_psnr(psnr)
        ))
    }
}
